//! The Teams app package: `manifest/manifest.json` with the app id and domain filled in, and
//! the two icons, zipped.
//!
//! Interface only; the packager is implemented in this file.

use std::path::Path;

/// Writes the app package zip to `out` for `app_id` served at `domain`.
pub fn write_package(_app_id: &str, _domain: &str, _out: &Path) -> anyhow::Result<()> {
    anyhow::bail!("manifest packaging is not implemented yet")
}
