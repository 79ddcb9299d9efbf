//! The Teams app package: `manifest/manifest.json` with the app id and domain filled in, and
//! the two icons, zipped.
//!
//! The template's string values may hold the placeholders `{{APP_ID}}`, `{{DOMAIN}}` and
//! `{{VERSION}}` (the crate version); they are replaced value by value in the parsed JSON, so
//! no input can change the document's structure.

use std::io::{Cursor, Write};
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;
use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

use crate::ids::is_guid;

/// The manifest template, with placeholders.
const MANIFEST_TEMPLATE: &str = include_str!("../manifest/manifest.json");
/// The 192x192 colour icon.
pub const COLOR_ICON: &[u8] = include_bytes!("../manifest/color.png");
/// The 32x32 white-on-transparent outline icon.
pub const OUTLINE_ICON: &[u8] = include_bytes!("../manifest/outline.png");

const APP_ID: &str = "{{APP_ID}}";
const DOMAIN: &str = "{{DOMAIN}}";
const VERSION: &str = "{{VERSION}}";

/// Checks that `domain` is a bare DNS host name (`bot.example.com`): no scheme, port, path,
/// user info or wildcard; labels of letters, digits and inner hyphens; at most 253 characters.
pub fn validate_domain(domain: &str) -> anyhow::Result<()> {
    let hint = "give the bare host name the bot is reachable at, e.g. bot.example.com \
                (no https://, port or path)";
    if domain.is_empty() {
        bail!("the domain is empty: {hint}");
    }
    if domain.len() > 253 {
        bail!("the domain is longer than 253 characters: {hint}");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !labels.iter().all(label_ok) {
        bail!("{domain:?} is not a valid host name: {hint}");
    }
    // A top-level label of digits only means an IP address, which Teams does not accept.
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        bail!("{domain:?} looks like an IP address: {hint}");
    }
    Ok(())
}

/// The manifest for `app_id` served at `domain`, placeholders filled; validates both first.
pub fn manifest_json(app_id: &str, domain: &str) -> anyhow::Result<Value> {
    if !is_guid(app_id) {
        bail!(
            "the app id {app_id:?} is not a GUID: give the bot's Microsoft App ID \
             (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        );
    }
    validate_domain(domain)?;
    let app_id = app_id.to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    let mut manifest: Value =
        serde_json::from_str(MANIFEST_TEMPLATE).context("manifest/manifest.json is not JSON")?;
    fill(&mut manifest, &|text: &str| {
        text.replace(APP_ID, &app_id)
            .replace(DOMAIN, &domain)
            .replace(VERSION, env!("CARGO_PKG_VERSION"))
    });
    manifest["bots"][0]["commandLists"] = command_lists();
    let text = manifest.to_string();
    if text.contains("{{") {
        bail!("manifest/manifest.json has an unknown placeholder");
    }
    Ok(manifest)
}

/// Teams shows at most 12 commands per menu (manifest schema `commandLists[].commands`); the
/// first ones in help-card order are offered, the help card lists them all.
pub const MAX_MENU_COMMANDS: usize = 12;

/// The command menus, one per scope, from the commands that work in this version.
fn command_lists() -> Value {
    let lists: Vec<Value> = ["personal", "team", "groupChat"]
        .into_iter()
        .map(|scope| {
            let commands: Vec<Value> = crate::chat::working_commands()
                .filter(|command| command.scopes.contains(&scope))
                .take(MAX_MENU_COMMANDS)
                .map(|command| {
                    serde_json::json!({"title": command.usage, "description": command.description})
                })
                .collect();
            serde_json::json!({"scopes": [scope], "commands": commands})
        })
        .collect();
    Value::Array(lists)
}

/// Applies `f` to every string value (not to keys) in `value`.
fn fill(value: &mut Value, f: &dyn Fn(&str) -> String) {
    match value {
        Value::String(s) => *s = f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| fill(v, f)),
        Value::Object(map) => map.values_mut().for_each(|v| fill(v, f)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The package zip bytes: `manifest.json`, `color.png` and `outline.png` at the zip root.
pub fn package_bytes(app_id: &str, domain: &str) -> anyhow::Result<Vec<u8>> {
    let manifest = manifest_json(app_id, domain)?;
    let manifest =
        serde_json::to_vec_pretty(&manifest).context("serializing the manifest failed")?;
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (name, bytes) in [
        ("manifest.json", manifest.as_slice()),
        ("color.png", COLOR_ICON),
        ("outline.png", OUTLINE_ICON),
    ] {
        zip.start_file(name, options)
            .with_context(|| format!("adding {name} to the package failed"))?;
        zip.write_all(bytes)
            .with_context(|| format!("writing {name} into the package failed"))?;
    }
    let cursor = zip.finish().context("finishing the package zip failed")?;
    Ok(cursor.into_inner())
}

/// Writes the app package zip to `out` for `app_id` served at `domain`.
///
/// Nothing is written when the app id or domain is invalid; the file appears whole or not at
/// all (written beside `out`, then renamed).
pub fn write_package(app_id: &str, domain: &str, out: &Path) -> anyhow::Result<()> {
    let bytes = package_bytes(app_id, domain)?;
    let file_name = out
        .file_name()
        .with_context(|| format!("{} is not a file path", out.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = out.with_file_name(temp_name);
    std::fs::write(&temp, &bytes).with_context(|| format!("writing {} failed", out.display()))?;
    std::fs::rename(&temp, out).with_context(|| {
        // Best effort: do not leave the temporary file behind.
        let _ = std::fs::remove_file(&temp);
        format!("writing {} failed", out.display())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Width, height, bit depth and colour type from a PNG's IHDR chunk.
    fn ihdr(png: &[u8]) -> (u32, u32, u8, u8) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&png[12..16], b"IHDR", "first chunk is IHDR");
        let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
        (be(16), be(20), png[24], png[25])
    }

    #[test]
    fn colour_icon_is_192_square() {
        let (w, h, depth, _) = ihdr(COLOR_ICON);
        assert_eq!((w, h, depth), (192, 192, 8));
    }

    #[test]
    fn outline_icon_is_32_square_with_alpha() {
        // Colour type 6 = RGBA, so the background can be transparent.
        assert_eq!(ihdr(OUTLINE_ICON), (32, 32, 8, 6));
    }

    #[test]
    fn placeholders_are_filled() {
        let app_id = "AAAAAAAA-2222-3333-4444-555555555555";
        let m = manifest_json(app_id, "Bot.Example.com").expect("valid input");
        let text = m.to_string();
        assert!(!text.contains("{{"));
        assert_eq!(m["id"], "aaaaaaaa-2222-3333-4444-555555555555");
        assert_eq!(m["bots"][0]["botId"], m["id"]);
        assert_eq!(m["validDomains"][0], "bot.example.com");
        assert_eq!(
            m["webApplicationInfo"]["resource"],
            "api://bot.example.com/botid-aaaaaaaa-2222-3333-4444-555555555555"
        );
        assert_eq!(m["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn accent_colour_matches_the_icon_background() {
        let m = manifest_json("11111111-2222-3333-4444-555555555555", "bot.example.com")
            .expect("valid input");
        assert_eq!(m["accentColor"], "#0F6CBD");
    }

    #[test]
    fn domains_are_checked() {
        for ok in [
            "bot.example.com",
            "localhost",
            "a-b.c1.example",
            "xn--bcher-kva.example",
        ] {
            assert!(validate_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "https://bot.example.com",
            "bot.example.com/path",
            "bot.example.com:443",
            "user@bot.example.com",
            "*.example.com",
            "-bad.example.com",
            "bad-.example.com",
            "bot..example.com",
            "bot.example.com.",
            "127.0.0.1",
            "bot example.com",
            "bot.example.com\"",
        ] {
            assert!(validate_domain(bad).is_err(), "{bad:?}");
        }
        assert!(validate_domain(&"a".repeat(64)).is_err());
    }

    #[test]
    fn bad_app_id_is_refused() {
        let err = manifest_json("not-a-guid", "bot.example.com").expect_err("bad id");
        assert!(err.to_string().contains("GUID"), "{err}");
    }
}
