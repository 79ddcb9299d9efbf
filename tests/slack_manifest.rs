//! `m365bot manifest --slack`: validated offline against Slack's published app manifest schema
//! (`slackapi/manifest-schema` 1.0.0, draft-07) with ajv (needs `npm ci --prefix tools/node`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `node tools/node/validate-slack-manifest.js <schema> <file>`; fails loudly when the
/// tools are absent.
fn validate(manifest: &Path) -> std::process::Output {
    let tools = repo().join("tools").join("node");
    assert!(
        tools.join("node_modules").join("ajv-formats").is_dir(),
        "tools/node/node_modules is missing: run `npm ci --prefix tools/node` first"
    );
    Command::new("node")
        .arg(tools.join("validate-slack-manifest.js"))
        .arg(repo().join("tests/fixtures/schemas/slack-app-manifest.schema.1.0.0.json"))
        .arg(manifest)
        .output()
        .expect("`node` must be installed to validate the manifest")
}

fn cli_manifest(envs: &[(&str, &str)]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_m365bot"));
    command
        .args(["manifest", "--slack"])
        .env_remove("M365BOT_CONFIG");
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command.output().expect("m365bot runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

#[test]
fn the_printed_manifest_is_valid_for_both_transports() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (transport, socket) in [("http", false), ("socket", true)] {
        let manifest = cli_manifest(&[
            ("M365BOT_SERVER__PUBLIC_URL", "https://bot.contoso.example/"),
            ("M365BOT_SLACK__TRANSPORT", transport),
        ]);
        assert_eq!(manifest["settings"]["socket_mode_enabled"], socket);
        let command = &manifest["features"]["slash_commands"][0];
        assert_eq!(command["command"], "/m365");
        if !socket {
            assert_eq!(command["url"], "https://bot.contoso.example/slack/commands");
        }
        // Installs into more workspaces come back to the callback over either transport.
        assert_eq!(
            manifest["oauth_config"]["redirect_urls"],
            serde_json::json!(["https://bot.contoso.example/slack/oauth/callback"])
        );
        assert_eq!(
            manifest["settings"]["event_subscriptions"]["bot_events"],
            serde_json::json!(["app_uninstalled", "tokens_revoked"])
        );
        let file = dir.path().join(format!("{transport}.json"));
        std::fs::write(&file, serde_json::to_vec(&manifest).expect("json")).expect("write");
        let output = validate(&file);
        assert!(
            output.status.success(),
            "{transport}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_validator_refuses_what_slack_would() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = cli_manifest(&[("M365BOT_SERVER__PUBLIC_URL", "https://bot.contoso.example/")]);
    let mut broken = manifest.clone();
    broken["features"]["slash_commands"][0]["command"] = "m365".into();
    broken["display_information"]["name"] =
        "a name far longer than the thirty-five characters allowed".into();
    let file = dir.path().join("broken.json");
    std::fs::write(&file, serde_json::to_vec(&broken).expect("json")).expect("write");
    let output = validate(&file);
    assert_eq!(output.status.code(), Some(1));
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        errors.contains("/features/slash_commands/0/command"),
        "{errors}"
    );
    assert!(errors.contains("/display_information/name"), "{errors}");
}
