//! Card templates: snapshots, hostile input, strict mode and size limits.
//!
//! Snapshots live in `tests/snapshots/<name>.json`; run with `UPDATE_SNAPSHOTS=1` to rewrite
//! them after an intended change, then review the diff.

use std::path::PathBuf;

use m365bot::cards::{CardError, CardRenderer, MAX_CARD_BYTES, template_names};
use m365bot::core::{Reply, Tone};
use serde_json::{Value, json};

/// One snapshot: file stem, template and view model.
struct Sample {
    snapshot: String,
    template: String,
    model: Value,
}

/// The built-in samples plus one per file in `tests/card_samples/<snapshot>.json`
/// (`{"template": "teams/…", "model": {…}}`), so each feature keeps its samples in its own files.
fn samples() -> Vec<Sample> {
    let mut samples = core_samples();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("card_samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for path in files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let text = std::fs::read_to_string(&path).expect("card sample readable");
        let sample: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        samples.push(Sample {
            snapshot: path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("file stem")
                .to_owned(),
            template: sample["template"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no template", path.display()))
                .to_owned(),
            model: sample["model"].clone(),
        });
    }
    samples
}

fn core_samples() -> Vec<Sample> {
    [
        (
            "teams_help",
            "teams/help",
            json!({
                "title": "m365bot commands",
                "intro": "Type a command in this chat, or mention me in a channel (@m365bot help). /m365 in front works too.",
                "commands": [
                    {"usage": "help", "description": "Show this list of commands."},
                    {"usage": "setup", "description": "Start or resume the setup wizard for the ServiceNow - Microsoft 365 support integration."},
                    {"usage": "setup status", "description": "Show where the wizard is, what is verified and what drifted."},
                    {"usage": "doctor", "description": "Re-run every verification and report drift with fix hints."},
                    {"usage": "link-account", "description": "Link your Microsoft 365 admin account."},
                    {"usage": "subscribe [filter]", "description": "Post case-status notifications into this channel."},
                    {"usage": "subscriptions", "description": "List the notification subscriptions of this channel."},
                    {"usage": "status <case>", "description": "Show the current state of one case."}
                ]
            }),
        ),
        (
            "teams_notice_default",
            "teams/notice",
            json!({
                "tone": "default",
                "title": "Setup is waiting for you",
                "text": "The wizard is at step 3 of 9: **Tenant domain**.",
                "next_step": "Type **setup** in a 1:1 chat with me to continue."
            }),
        ),
        (
            "teams_notice_good",
            "teams/notice",
            json!({
                "tone": "good",
                "title": "Account linked",
                "text": "Your Microsoft 365 admin account admin@contoso.onmicrosoft.com is now linked.",
                "next_step": null
            }),
        ),
        (
            "teams_notice_warning",
            "teams/notice",
            json!({
                "tone": "warning",
                "title": "Not available yet",
                "text": "**subscribe** is not available in this version of m365bot.",
                "next_step": "Type **help** to see the commands that work."
            }),
        ),
        (
            "teams_notice_attention",
            "teams/notice",
            json!({
                "tone": "attention",
                "title": "I didn't understand that",
                "text": "Unknown command \"frobnicate\".",
                "next_step": null
            }),
        ),
    ]
    .into_iter()
    .map(|(snapshot, template, model)| Sample {
        snapshot: snapshot.to_owned(),
        template: template.to_owned(),
        model,
    })
    .collect()
}

fn renderer() -> CardRenderer {
    CardRenderer::new().expect("templates compile")
}

fn snapshot_path(stem: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("snapshots")
        .join(format!("{stem}.json"))
}

/// A minimal line diff (longest common subsequence), `-` expected, `+` actual.
fn line_diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}

fn check_snapshot(stem: &str, actual: &Value) -> Result<(), String> {
    let path = snapshot_path(stem);
    let pretty = format!(
        "{}\n",
        serde_json::to_string_pretty(actual).expect("serializes")
    );
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir snapshots");
        std::fs::write(&path, &pretty).expect("write snapshot");
        return Ok(());
    }
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Err(format!(
            "{stem}: snapshot {} is missing; run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        ));
    };
    let expected: Value = serde_json::from_str(&text)
        .map_err(|err| format!("{stem}: snapshot is not JSON: {err}"))?;
    if &expected == actual {
        return Ok(());
    }
    let expected_pretty = format!(
        "{}\n",
        serde_json::to_string_pretty(&expected).expect("serializes")
    );
    Err(format!(
        "{stem}: card differs from {} (- expected, + actual; UPDATE_SNAPSHOTS=1 rewrites it):\n{}",
        path.display(),
        line_diff(&expected_pretty, &pretty)
    ))
}

#[test]
fn cards_match_snapshots() {
    let renderer = renderer();
    let failures: Vec<String> = samples()
        .iter()
        .filter_map(|sample| {
            let card = renderer
                .render(&sample.template, &sample.model)
                .unwrap_or_else(|err| panic!("{}: {err}", sample.snapshot));
            check_snapshot(&sample.snapshot, &card).err()
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_template_has_a_snapshot_sample() {
    let samples = samples();
    for name in template_names() {
        assert!(
            samples.iter().any(|s| s.template == name),
            "template {name} has no sample in tests/cards.rs"
        );
    }
}

#[test]
fn cards_are_adaptive_cards_1_5() {
    let renderer = renderer();
    for sample in samples() {
        let card = renderer
            .render(&sample.template, &sample.model)
            .expect("renders");
        assert_eq!(card["type"], "AdaptiveCard", "{}", sample.snapshot);
        assert_eq!(card["version"], "1.5", "{}", sample.snapshot);
        assert_eq!(
            card["$schema"], "http://adaptivecards.io/schemas/adaptive-card.json",
            "{}",
            sample.snapshot
        );
        assert!(
            card["body"].as_array().is_some_and(|b| !b.is_empty()),
            "{}",
            sample.snapshot
        );
    }
}

/// Every string leaf of `value`.
fn string_leaves(value: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => out.push(s.as_str()),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (key, item) in map {
                    out.push(key.as_str());
                    stack.push(item);
                }
            }
            _ => {}
        }
    }
    out
}

/// Replaces every string leaf except the enum fields (`tone`) with `hostile`; returns how many.
fn fill_strings(value: &mut Value, hostile: &str) -> usize {
    match value {
        Value::String(s) => {
            *s = hostile.to_owned();
            1
        }
        Value::Array(items) => items.iter_mut().map(|v| fill_strings(v, hostile)).sum(),
        Value::Object(map) => map
            .iter_mut()
            .filter(|(key, _)| key.as_str() != "tone")
            .map(|(_, v)| fill_strings(v, hostile))
            .sum(),
        _ => 0,
    }
}

fn hostile_strings() -> Vec<String> {
    vec![
        r#"He said "hi" and left"#.to_owned(),
        r"C:\path\to\file \\server\share \u0041 \n".to_owned(),
        "line one\nline two\r\nline three".to_owned(),
        "col\tcol\tcol".to_owned(),
        "{{title}} {{{raw}}} {{#each x}}{{/each}} }} {{".to_owned(),
        "</script><script>alert(1)</script>".to_owned(),
        "<at>x</at> <b>bold</b> &amp; &lt;".to_owned(),
        "emoji 😀 👩‍💻 🇫🇷 and ünïcödé ✓".to_owned(),
        "nul\u{0}bell\u{7}esc\u{1b}del\u{7f}us\u{1f}".to_owned(),
        "ls\u{2028}ps\u{2029}end".to_owned(),
        "x".repeat(10_000),
    ]
}

#[test]
fn hostile_strings_survive_every_template() {
    let renderer = renderer();
    let samples = samples();
    for name in template_names() {
        let base = samples
            .iter()
            .find(|s| s.template == name)
            .map(|s| s.model.clone())
            .expect("every template has a sample");
        for hostile in hostile_strings() {
            let mut model = base.clone();
            // Keep lists short so the 10,000-character string stays under the size limit.
            if let Some(map) = model.as_object_mut() {
                for list in map.values_mut().filter_map(Value::as_array_mut) {
                    list.truncate(2);
                }
            }
            let filled = fill_strings(&mut model, &hostile);
            assert!(filled > 0, "{name}: sample has no string field");
            let card = renderer
                .render(name, &model)
                .unwrap_or_else(|err| panic!("{name} with {:?}: {err}", short(&hostile)));
            let found = string_leaves(&card)
                .iter()
                .filter(|leaf| leaf.contains(hostile.as_str()))
                .count();
            assert!(
                found >= filled,
                "{name}: {:?} found intact in {found} strings, expected {filled}",
                short(&hostile)
            );
            assert_eq!(card["version"], "1.5");
        }
    }
}

fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

#[test]
fn notice_tone_picks_the_title_colour() {
    let renderer = renderer();
    for (tone, colour) in [
        ("default", "Default"),
        ("good", "Good"),
        ("warning", "Warning"),
        ("attention", "Attention"),
        ("something-else", "Default"),
    ] {
        let card = renderer
            .render(
                "teams/notice",
                &json!({"tone": tone, "title": "T", "text": "x", "next_step": null}),
            )
            .expect("renders");
        assert_eq!(card["body"][0]["items"][0]["color"], colour, "{tone}");
        assert_eq!(card["body"][0]["items"][0]["text"], "T");
    }
}

#[test]
fn notice_shows_the_next_step_only_when_present() {
    let renderer = renderer();
    let with = renderer
        .render(
            "teams/notice",
            &json!({"tone": "good", "title": "T", "text": "x", "next_step": "Do this"}),
        )
        .expect("renders");
    assert!(string_leaves(&with).contains(&"Do this"));
    assert!(string_leaves(&with).contains(&"Next step"));
    let without = renderer
        .render(
            "teams/notice",
            &json!({"tone": "good", "title": "T", "text": "x", "next_step": null}),
        )
        .expect("renders");
    assert!(!string_leaves(&without).contains(&"Next step"));
    assert_eq!(without["body"].as_array().map(Vec::len), Some(2));
}

#[test]
fn missing_fields_are_errors_not_panics() {
    let renderer = renderer();
    let cases = [
        ("teams/help", json!({})),
        ("teams/help", json!({"title": "t", "intro": "i"})),
        (
            "teams/help",
            json!({"title": "t", "intro": "i", "commands": [{"usage": "help"}]}),
        ),
        ("teams/help", Value::Null),
        ("teams/help", json!("a string")),
        (
            "teams/notice",
            json!({"tone": "good", "title": "t", "text": "x"}),
        ),
        (
            "teams/notice",
            json!({"title": "t", "text": "x", "next_step": null}),
        ),
        ("teams/notice", json!([])),
    ];
    for (name, model) in cases {
        let err = renderer
            .render(name, &model)
            .expect_err("missing field must fail in strict mode");
        assert!(
            matches!(&err, CardError::Render { name: n, .. } if n == name),
            "{name} {model}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn oversized_cards_are_refused() {
    let renderer = renderer();
    let commands: Vec<Value> = (0..12)
        .map(|_| json!({"usage": "x", "description": "y".repeat(10_000)}))
        .collect();
    let err = renderer
        .render(
            "teams/help",
            &json!({"title": "t", "intro": "i", "commands": commands}),
        )
        .expect_err("too large");
    match err {
        CardError::TooLarge { name, size, limit } => {
            assert_eq!(name, "teams/help");
            assert_eq!(limit, MAX_CARD_BYTES);
            assert!(size > limit);
        }
        other => panic!("expected TooLarge, got {other}"),
    }
}

#[test]
fn unknown_template_is_an_error() {
    let err = renderer()
        .render("teams/nope", &json!({}))
        .expect_err("unknown template");
    assert!(matches!(err, CardError::UnknownTemplate(n) if n == "teams/nope"));
}

#[test]
fn core_view_models_render() {
    let renderer = renderer();
    let mut replies = vec![m365bot::chat::help_card()];
    for tone in [Tone::Default, Tone::Good, Tone::Warning, Tone::Attention] {
        replies.push(Reply::notice(tone, "Title", "Text", Some("Next")));
        replies.push(Reply::notice(tone, "Title", "Text", None));
    }
    for reply in replies {
        let Reply::Card { template, data } = reply;
        let card = renderer
            .render(&format!("teams/{template}"), &data)
            .unwrap_or_else(|err| panic!("{template}: {err}"));
        assert_eq!(card["type"], "AdaptiveCard");
    }
}

#[test]
fn line_diff_marks_changes() {
    let diff = line_diff("a\nb\nc\n", "a\nB\nc\n");
    assert_eq!(diff, "  a\n- b\n+ B\n  c\n");
}

#[test]
fn help_gives_every_command_the_full_width_so_role_names_never_break() {
    let m365bot::core::Reply::Card { template, data } = m365bot::chat::help_card();
    let card = renderer()
        .render(&format!("teams/{template}"), &data)
        .expect("renders");
    let text = card.to_string();
    assert!(
        !text.contains("ColumnSet"),
        "no narrow usage column: {text}"
    );
    let list = card["body"][2]["items"].as_array().expect("command list");
    let grant = list
        .iter()
        .find(|c| c["items"][0]["text"] == "grant @user insights_user|administrator")
        .expect("the grant command");
    assert_eq!(grant["type"], "Container");
    assert_eq!(
        grant["items"][1]["type"], "TextBlock",
        "description below it"
    );
}

#[test]
fn the_completion_title_uses_the_default_colour_on_its_good_container() {
    let sample: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/card_samples/setup_complete_values.json").expect("sample"),
    )
    .expect("json");
    let card = renderer()
        .render("teams/setup_complete", &sample["model"])
        .expect("renders");
    assert_eq!(card["body"][0]["style"], "good");
    let title = &card["body"][0]["items"][0];
    assert_eq!(title["style"], "heading");
    assert!(
        title.get("color").is_none(),
        "pale green on light green: {title}"
    );
}
