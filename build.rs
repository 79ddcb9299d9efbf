//! Records the git revision the binary is built from, for `m365bot --version` and `/readyz`.
//!
//! `M365BOT_GIT_REVISION` set at build time wins (release pipelines, source packages); else
//! `git` is asked when this crate is the top of a git checkout; else the revision is `unknown`,
//! so a source tarball without `.git` still builds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=M365BOT_GIT_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    let revision = std::env::var("M365BOT_GIT_REVISION")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .or_else(revision_from_git)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=M365BOT_GIT_REVISION={}", revision.trim());
}

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// The short HEAD revision, when the crate directory is the top of its own checkout (not a
/// tarball unpacked inside some other repository).
fn revision_from_git() -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if canonical(&top) != canonical(&manifest_dir) {
        return None;
    }
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself, the branch it points to, and packed refs.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &reference]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        let path = manifest_dir.join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(revision)
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}
