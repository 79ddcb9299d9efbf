//! The command line as a user meets it: start-up refuses bad configuration naming the key,
//! `migrate` creates the database, `manifest` writes the package, `--help` lists the commands.
use std::process::Command;

fn m365bot() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_m365bot"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn serve_without_an_app_id_names_the_key() {
    let output = m365bot().arg("serve").output().expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bot.app_id"), "{stderr}");
    assert!(
        stderr.contains("MicrosoftAppId"),
        "says which variable to set: {stderr}"
    );
}

#[test]
fn a_bad_value_names_its_key_and_source() {
    let output = m365bot()
        .arg("migrate")
        .env("M365BOT_SERVER__MAX_BODY_BYTES", "lots")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.to_lowercase().contains("server.max_body_bytes"),
        "{stderr}"
    );
}

#[test]
fn insecure_local_mode_is_refused_off_loopback() {
    let output = m365bot()
        .arg("serve")
        .env("M365BOT_BOT__AUTH_MODE", "insecure-local")
        .env(
            "M365BOT_BOT__TENANT_ID",
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        )
        .env("M365BOT_SERVER__LISTEN", "0.0.0.0:0")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

#[test]
fn migrate_creates_the_sqlite_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("new.db");
    let output = m365bot()
        .arg("migrate")
        .env("MicrosoftAppId", "11111111-2222-3333-4444-555555555555")
        .env("MicrosoftAppPassword", "secret")
        .env(
            "MicrosoftAppTenantId",
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        )
        .env(
            "M365BOT_DATABASE__URL",
            format!("sqlite://{}", path.display()),
        )
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("up to date"));
    assert!(path.exists(), "the file is created on first start");
}

#[test]
fn manifest_writes_a_package_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("app.zip");
    let ok = m365bot()
        .args([
            "manifest",
            "--app-id",
            "11111111-2222-3333-4444-555555555555",
        ])
        .args(["--domain", "bot.example.com", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(std::fs::metadata(&out).expect("zip written").len() > 1000);
    let bad_out = dir.path().join("bad.zip");
    let bad = m365bot()
        .args([
            "manifest",
            "--app-id",
            "not-a-guid",
            "--domain",
            "bot.example.com",
            "--out",
        ])
        .arg(&bad_out)
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("GUID"));
    assert!(!bad_out.exists(), "nothing written");
}

#[test]
fn help_lists_the_commands() {
    let output = m365bot().arg("--help").output().expect("runs");
    let text = String::from_utf8_lossy(&output.stdout);
    for command in ["serve", "migrate", "sandbox", "doctor", "manifest"] {
        assert!(text.contains(command), "{command} in --help:\n{text}");
    }
}

#[test]
fn version_names_the_git_revision() {
    let output = m365bot().arg("--version").output().expect("runs");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.trim(), format!("m365bot {}", m365bot::VERSION));
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    if std::path::Path::new(manifest_dir).join(".git").exists() {
        let head = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(manifest_dir)
            .output()
            .expect("git runs");
        let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
        assert_eq!(
            m365bot::GIT_REVISION,
            head,
            "built from a checkout: {stdout}"
        );
    } else {
        assert_eq!(m365bot::GIT_REVISION, "unknown", "{stdout}");
    }
}
