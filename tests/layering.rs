//! The layering of `src/`, checked on the source: the core imports nothing above it, the
//! dispatch and identity layers know no adapter, and no feature module reaches into Slack.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The top-level modules a file names through `crate::…` (`crate::{a, b}` included), with
/// the line of each use. Comment lines are left out.
fn crate_modules(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).expect("readable source file");
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                for item in inner.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.push((number + 1, name));
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push((number + 1, name));
            }
            rest = after;
        }
    }
    out
}

/// Each use of a module outside `allowed`, by the files under `src/<layer>` (or the file
/// `src/<layer>.rs`), as `path:line → module`.
fn violations(layer: &str, allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let dir = src.join(layer);
    let files = if dir.is_dir() {
        rust_files(&dir)
    } else {
        vec![src.join(format!("{layer}.rs"))]
    };
    assert!(
        files.iter().all(|file| file.exists()),
        "no source for the layer {layer}"
    );
    let mut found = Vec::new();
    for file in files {
        for (line, module) in crate_modules(&file) {
            if !allowed(&module) {
                let shown = file
                    .strip_prefix(&src)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                found.push(format!("src/{shown}:{line} → crate::{module}"));
            }
        }
    }
    found
}

#[test]
fn the_reader_finds_the_crate_paths_it_checks() {
    let dir = std::env::temp_dir().join(format!("layering-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("sample.rs");
    std::fs::write(
        &file,
        "use crate::core::Reply;\n// crate::app is only mentioned\nuse crate::{app::App, slack};\nlet x = crate::teams::render(a);\n",
    )
    .expect("write sample");
    let found = crate_modules(&file);
    std::fs::remove_dir_all(&dir).ok();
    let names: Vec<&str> = found.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(names, ["core", "app", "slack", "teams"]);
    assert_eq!(found[1].0, 3);
}

#[test]
fn the_core_imports_nothing_above_it() {
    let found = violations("core", |module| module == "core");
    assert!(
        found.is_empty(),
        "src/core must not depend on the modules built on it:\n{}",
        found.join("\n")
    );
}

#[test]
fn dispatch_and_identity_know_no_adapter() {
    let adapter = |module: &str| matches!(module, "teams" | "slack" | "routes" | "sandbox");
    for layer in ["chat", "identity"] {
        let found = violations(layer, |module| !adapter(module));
        assert!(
            found.is_empty(),
            "src/{layer} must reach the platforms through the core's traits:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn feature_modules_do_not_reach_into_the_slack_adapter() {
    for layer in ["setup", "link", "notify", "integration", "identity", "chat"] {
        let found = violations(layer, |module| module != "slack");
        assert!(
            found.is_empty(),
            "src/{layer} must not depend on the Slack adapter:\n{}",
            found.join("\n")
        );
    }
}
