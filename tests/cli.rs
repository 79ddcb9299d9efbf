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

/// The `manifest.json` inside a written package.
fn manifest_in(zip: &std::path::Path) -> serde_json::Value {
    let file = std::fs::File::open(zip).expect("zip written");
    let mut archive = zip::ZipArchive::new(file).expect("a zip");
    let entry = archive.by_name("manifest.json").expect("manifest.json");
    serde_json::from_reader(entry).expect("manifest.json is JSON")
}

#[test]
fn manifest_reads_the_app_id_and_domain_on_their_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app_id = "11111111-2222-3333-4444-555555555555";
    // Only the app id in the environment (Bot Framework name, then the M365BOT_ one), no
    // configuration otherwise, no --domain: the documented default host is used.
    for (variable, out) in [
        ("MicrosoftAppId", dir.path().join("bf.zip")),
        ("M365BOT_BOT__APP_ID", dir.path().join("m365bot.zip")),
    ] {
        let run = m365bot()
            .args(["manifest", "--out"])
            .arg(&out)
            .env(variable, app_id)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{variable}: {stderr}");
        assert!(stderr.contains("server.public_url is not set"), "{stderr}");
        let manifest = manifest_in(&out);
        assert_eq!(manifest["id"], app_id, "{variable}");
        assert_eq!(
            manifest["validDomains"][0], "m365bot.example.com",
            "{manifest}"
        );
    }
    // The domain from server.public_url alone.
    let out = dir.path().join("domain.zip");
    let run = m365bot()
        .args(["manifest", "--out"])
        .arg(&out)
        .env("MicrosoftAppId", app_id)
        .env("M365BOT_SERVER__PUBLIC_URL", "https://bot.contoso.com/")
        .output()
        .expect("runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(manifest_in(&out)["validDomains"][0], "bot.contoso.com");
    // Without an app id, the error names exactly that key.
    let missing = m365bot()
        .args(["manifest", "--domain", "bot.contoso.com", "--out"])
        .arg(dir.path().join("none.zip"))
        .output()
        .expect("runs");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("app id is missing"), "{stderr}");
    assert!(stderr.contains("MicrosoftAppId"), "{stderr}");
    assert!(
        !stderr.contains("--domain"),
        "only the missing key is named: {stderr}"
    );
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
