//! The Teams app package: zip layout, filled placeholders, and offline schema validation with
//! `@microsoft/app-manifest` (needs `npm ci --prefix tools/node`).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use m365bot::manifest::{COLOR_ICON, OUTLINE_ICON, write_package};
use serde_json::Value;

const APP_ID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
const DOMAIN: &str = "bot.contoso.example";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds a package and returns (temp dir, the zip's entries by name).
fn build_package() -> (tempfile::TempDir, Vec<(String, Vec<u8>)>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("m365bot.zip");
    write_package(APP_ID, DOMAIN, &out).expect("package written");
    let file = std::fs::File::open(&out).expect("zip exists");
    let mut archive = zip::ZipArchive::new(file).expect("a zip file");
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).expect("entry");
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("entry readable");
        entries.push((entry.name().to_owned(), bytes));
    }
    (dir, entries)
}

fn manifest_of(entries: &[(String, Vec<u8>)]) -> Value {
    let (_, bytes) = entries
        .iter()
        .find(|(name, _)| name == "manifest.json")
        .expect("manifest.json in the package");
    serde_json::from_slice(bytes).expect("manifest.json is JSON")
}

/// Runs `node tools/node/validate-manifest.js <file>`; fails loudly when the tools are absent.
fn validate(manifest: &Path) -> std::process::Output {
    let tools = repo().join("tools").join("node");
    assert!(
        tools
            .join("node_modules")
            .join("@microsoft")
            .join("app-manifest")
            .is_dir(),
        "tools/node/node_modules is missing: run `npm ci --prefix tools/node` first"
    );
    Command::new("node")
        .arg(tools.join("validate-manifest.js"))
        .arg(manifest)
        .output()
        .expect("`node` must be installed (Node 18 or newer) to validate the manifest")
}

#[test]
fn package_has_the_three_files_at_the_root() {
    let (_dir, entries) = build_package();
    let names: BTreeSet<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["color.png", "manifest.json", "outline.png"])
    );
    assert_eq!(entries.len(), 3, "no duplicate entries");
    for (name, bytes) in &entries {
        match name.as_str() {
            "color.png" => assert_eq!(bytes.as_slice(), COLOR_ICON),
            "outline.png" => assert_eq!(bytes.as_slice(), OUTLINE_ICON),
            _ => {}
        }
    }
}

#[test]
fn app_id_and_domain_are_filled_everywhere() {
    let (_dir, entries) = build_package();
    let m = manifest_of(&entries);
    let text = m.to_string();
    assert!(!text.contains("{{"), "placeholder left: {text}");
    assert_eq!(m["id"], APP_ID);
    assert_eq!(m["bots"][0]["botId"], APP_ID);
    assert_eq!(m["webApplicationInfo"]["id"], APP_ID);
    assert_eq!(
        m["webApplicationInfo"]["resource"],
        format!("api://{DOMAIN}/botid-{APP_ID}")
    );
    assert_eq!(m["validDomains"], serde_json::json!([DOMAIN]));
    for key in ["websiteUrl", "privacyUrl", "termsOfUseUrl"] {
        let url = m["developer"][key].as_str().expect("developer url");
        assert!(
            url.starts_with(&format!("https://{DOMAIN}/")),
            "{key}: {url}"
        );
    }
    assert_eq!(m["icons"]["color"], "color.png");
    assert_eq!(m["icons"]["outline"], "outline.png");
}

#[test]
fn bot_scopes_and_command_lists_agree() {
    let (_dir, entries) = build_package();
    let m = manifest_of(&entries);
    let bot = &m["bots"][0];
    let scopes: BTreeSet<&str> = bot["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(scopes, BTreeSet::from(["groupChat", "personal", "team"]));
    let known: BTreeSet<&str> = m365bot::chat::working_commands()
        .map(|command| command.usage)
        .collect();
    let mut covered = BTreeSet::new();
    let lists = bot["commandLists"].as_array().expect("commandLists");
    assert!(lists.len() <= 3);
    for list in lists {
        for scope in list["scopes"].as_array().expect("list scopes") {
            covered.insert(scope.as_str().expect("scope"));
        }
        let commands = list["commands"].as_array().expect("commands");
        assert!(!commands.is_empty() && commands.len() <= 12);
        for command in commands {
            let title = command["title"].as_str().expect("title");
            let description = command["description"].as_str().expect("description");
            assert!(known.contains(title), "unknown command {title}");
            assert!(title.len() <= 128 && !description.is_empty());
            assert!(description.len() <= 4000);
        }
        assert!(commands.iter().any(|c| c["title"] == "help"));
    }
    assert_eq!(covered, scopes, "every bot scope has a command list");
    for scope in ["personal", "team", "groupChat"] {
        let offered: Vec<_> = m365bot::chat::working_commands()
            .filter(|command| command.scopes.contains(&scope))
            .take(m365bot::manifest::MAX_MENU_COMMANDS)
            .collect();
        for command in offered {
            let listed = lists.iter().any(|list| {
                list["scopes"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|v| v == scope))
                    && list["commands"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["title"] == command.usage))
            });
            assert!(listed, "{} is offered in {scope}", command.usage);
        }
    }
}

#[test]
fn packaged_manifest_passes_the_official_schema_offline() {
    let (dir, entries) = build_package();
    let (_, bytes) = entries
        .iter()
        .find(|(name, _)| name == "manifest.json")
        .expect("manifest.json");
    let extracted = dir.path().join("manifest.json");
    std::fs::write(&extracted, bytes).expect("extract");
    let output = validate(&extracted);
    assert!(
        output.status.success(),
        "validator rejected the package manifest:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid"));
}

#[test]
fn the_validator_rejects_the_invalid_sample() {
    let output = validate(&repo().join("tests/fixtures/manifest-invalid-example.json"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in ["privacyUrl", "accentColor", "scopes", "128"] {
        assert!(stderr.contains(expected), "{expected} not in:\n{stderr}");
    }
}

#[test]
fn the_validator_never_goes_online() {
    // A schema URL it has no local copy of would need the network; the validator must fail.
    let (dir, entries) = build_package();
    let mut m = manifest_of(&entries);
    m["$schema"] = Value::from("https://schemas.invalid/teams/MicrosoftTeams.schema.json");
    let path = dir.path().join("unknown-schema.json");
    std::fs::write(&path, m.to_string()).expect("write");
    let output = validate(&path);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("network access blocked"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn bad_input_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("m365bot.zip");
    let cases = [
        ("not-a-guid", DOMAIN, "GUID"),
        ("", DOMAIN, "GUID"),
        (APP_ID, "https://bot.contoso.example", "host name"),
        (APP_ID, "bot.contoso.example/api", "host name"),
        (APP_ID, "bot.contoso.example:443", "host name"),
        (APP_ID, "", "domain"),
    ];
    for (app_id, domain, hint) in cases {
        let err = write_package(app_id, domain, &out).expect_err("must be refused");
        assert!(err.to_string().contains(hint), "{app_id} {domain}: {err}");
        assert!(!out.exists());
    }
    let leftovers = std::fs::read_dir(dir.path()).expect("read dir").count();
    assert_eq!(leftovers, 0, "nothing written");
}

#[test]
fn an_existing_package_is_replaced_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("m365bot.zip");
    std::fs::write(&out, b"old").expect("write");
    write_package(APP_ID, DOMAIN, &out).expect("package written");
    let bytes = std::fs::read(&out).expect("read");
    assert_eq!(&bytes[..2], b"PK");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(names, ["m365bot.zip"], "no temporary file left");
}
