//! Block Kit from the same view models as the Adaptive Cards: every card sample renders for
//! both platforms, each carrying the same facts, within Slack's limits; oversized models are
//! shortened rather than refused; cards without a Slack form never leak their content.

use std::path::PathBuf;

use m365bot::cards::CardRenderer;
use m365bot::core::Reply;
use m365bot::slack::blocks::{self, MAX_MESSAGE_BLOCKS, Surface, check_limits};
use serde_json::{Value, json};

/// Letters and digits only, lower-cased: markup and escaping differ between the platforms.
fn normalise(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

fn strings<'a>(value: &'a Value, pointer: &str, key: &str, out: &mut Vec<&'a str>) {
    let Some(items) = value.pointer(pointer).and_then(Value::as_array) else {
        return;
    };
    for item in items {
        if let Some(text) = item.get(key).and_then(Value::as_str) {
            out.push(text);
        }
    }
}

/// The facts a reply must carry on both platforms.
fn facts<'a>(template: &str, model: &'a Value) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut field = |key: &str| {
        if let Some(text) = model.get(key).and_then(Value::as_str) {
            out.push(text);
        }
    };
    match template {
        "help" => field("title"),
        "notice" => {
            field("title");
            field("text");
            field("next_step");
        }
        "setup_results" => {
            field("title");
            field("summary");
        }
        "link_roles" => field("title"),
        "link_signin" => {
            field("title");
            field("text");
            field("button");
        }
        "notify_case" | "notify_status" => {
            field("number");
            field("title");
            field("state");
            field("latest_note");
        }
        "notify_update" => {
            field("number");
            field("headline");
            field("latest_note");
        }
        "notify_subscriptions" => {}
        _ => {}
    }
    match template {
        "help" => strings(model, "/commands", "usage", &mut out),
        "setup_results" => {
            strings(model, "/facts", "value", &mut out);
            strings(model, "/checks", "title", &mut out);
            strings(model, "/checks", "detail", &mut out);
        }
        "link_roles" => strings(model, "/roles", "role", &mut out),
        "notify_case" | "notify_status" => strings(model, "/facts", "value", &mut out),
        "notify_subscriptions" => {
            strings(model, "/subscriptions", "filter", &mut out);
            strings(model, "/subscriptions", "status", &mut out);
        }
        _ => {}
    }
    out.retain(|text| !normalise(text).is_empty());
    out
}

fn card_samples() -> Vec<(String, String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/card_samples");
    let mut samples = Vec::new();
    for entry in std::fs::read_dir(dir).expect("card samples") {
        let path = entry.expect("entry").path();
        let sample: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let template = sample["template"]
            .as_str()
            .expect("template")
            .trim_start_matches("teams/")
            .to_owned();
        samples.push((
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
            template,
            sample["model"].clone(),
        ));
    }
    samples.sort_by(|a, b| a.0.cmp(&b.0));
    samples
}

fn leak(template: &str) -> &'static str {
    Box::leak(template.to_owned().into_boxed_str())
}

#[test]
fn every_card_sample_carries_the_same_facts_on_both_platforms() {
    let renderer = CardRenderer::new().expect("templates");
    let mut samples = card_samples();
    samples.push((
        "help".to_owned(),
        "help".to_owned(),
        match m365bot::chat::help_card() {
            Reply::Card { data, .. } => data,
        },
    ));
    samples.push((
        "notice".to_owned(),
        "notice".to_owned(),
        json!({"tone": "warning", "title": "Setup is waiting", "text": "Step **3** of 9 <b>&</b>", "next_step": "Type **setup**."}),
    ));
    let mut compared = 0;
    for (name, template, model) in samples {
        let reply = Reply::Card {
            template: leak(&template),
            data: model.clone(),
        };
        let slack = blocks::render(&reply);
        let problems = check_limits(&slack.blocks, Surface::Message);
        assert!(problems.is_empty(), "{name}: {problems:?}");
        assert!(!slack.text.is_empty(), "{name}: a fallback text");
        let slack_text = normalise(&blocks::to_text(&json!(slack.blocks), ""));
        // Templates with a Slack form; the others (the setup wizard's steps, trust alerts) are
        // Teams-only in this version.
        let in_slack = [
            "help",
            "notice",
            "setup_results",
            "link_roles",
            "link_signin",
            "notify_case",
            "notify_status",
            "notify_update",
            "notify_subscriptions",
        ];
        if !in_slack.contains(&template.as_str()) {
            // No Slack form yet: a notice instead, never the card's content (it may hold
            // secrets meant for a 1:1 Teams chat).
            assert!(slack_text.contains("notavailableinslackyet"), "{name}");
            for value in model
                .pointer("/values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v["value"].as_str())
                .filter(|v| v.len() > 6)
            {
                assert!(
                    !slack_text.contains(&normalise(value)),
                    "{name} leaks {value}"
                );
            }
            continue;
        }
        let teams = renderer
            .render(&format!("teams/{template}"), &model)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let teams_text = normalise(&teams.to_string());
        let expected = facts(&template, &model);
        assert!(
            !expected.is_empty() || template == "notify_subscriptions",
            "{name}: no facts"
        );
        for fact in expected {
            let fact = normalise(fact);
            assert!(teams_text.contains(&fact), "{name}: Teams lacks {fact}");
            assert!(
                slack_text.contains(&fact),
                "{name}: Slack lacks {fact}\n{slack_text}"
            );
        }
        compared += 1;
    }
    assert!(compared >= 12, "only {compared} compared");
}

#[test]
fn oversized_models_are_shortened_with_an_ellipsis_and_a_link() {
    let facts: Vec<Value> = (0..600)
        .map(|i| json!({"title": format!("Field {i}"), "value": "v".repeat(2500)}))
        .collect();
    let model = json!({
        "number": "CS0001234", "title": "t".repeat(400), "source_label": "ServiceNow",
        "state": "In Progress", "tone": "warning", "facts": facts,
        "latest_note": "n".repeat(5000), "updated": "2026-12-07 01:00", "live": true,
        "url": "https://dev12345.service-now.com/incident.do?sys_id=1", "url_label": "Open the incident in ServiceNow, with a label much longer than a button may carry",
    });
    let message = blocks::render(&Reply::Card {
        template: "notify_status",
        data: model,
    });
    assert!(message.blocks.len() <= MAX_MESSAGE_BLOCKS);
    assert!(check_limits(&message.blocks, Surface::Message).is_empty());
    let text = blocks::to_text(&json!(message.blocks), "");
    assert!(text.contains('…'), "shortened with an ellipsis");
    assert!(
        text.contains("more: <https://dev12345.service-now.com/incident.do?sys_id=1|see all>"),
        "the rest is a link away: {}",
        &text[text.len().saturating_sub(300)..]
    );
}

#[test]
fn servicenow_text_cannot_mention_everyone_or_forge_links() {
    let model = json!({
        "number": "INC0010001", "title": "<!channel> please look <https://evil.example|your bank>",
        "source_label": "ServiceNow", "state": "New & <b>urgent</b>", "tone": "attention",
        "facts": [{"title": "Caller", "value": m365bot::cards::escape_markdown("<@U0ADMIN> & co")}],
        "latest_note": m365bot::cards::escape_markdown("[click](https://evil.example) <!here>"),
        "updated": "now", "live": false, "url": "", "url_label": "",
    });
    let message = blocks::render(&Reply::Card {
        template: "notify_case",
        data: model,
    });
    // Mentions and links are parsed in mrkdwn text only (plain text shows them as typed).
    fn mrkdwn_texts(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if map.get("type").and_then(Value::as_str) == Some("mrkdwn")
                    && let Some(text) = map.get("text").and_then(Value::as_str)
                {
                    out.push(text.to_owned());
                }
                map.values().for_each(|v| mrkdwn_texts(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| mrkdwn_texts(v, out)),
            _ => {}
        }
    }
    let mut texts = Vec::new();
    mrkdwn_texts(&json!(message.blocks), &mut texts);
    let raw = texts.join("\n");
    assert!(raw.contains("New"), "{raw}");
    for forged in ["<!here>", "<https://evil", "<@U0ADMIN>", "<b>"] {
        assert!(!raw.contains(forged), "{forged} survived: {raw}");
    }
    assert!(raw.contains("&lt;!here&gt;"), "{raw}");
    assert!(
        !message.text.contains("<!channel>"),
        "fallback text: {}",
        message.text
    );
    assert!(
        message.text.contains("&lt;!channel&gt;"),
        "{}",
        message.text
    );
    assert!(raw.contains("&amp;"), "{raw}");
}
