//! Property tests over every parser of untrusted input: card rendering of arbitrary strings,
//! the command parser, the push signature header, and activities of arbitrary JSON posted to
//! `/api/messages`. 256 cases each by default; `PROPTEST_CASES=10000` (as
//! `scripts/proptest-long.sh` runs them) for the long run. Each test prints how many cases ran.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use m365bot::cards::{CardRenderer, escape_markdown};
use m365bot::core::command::{self, AppRole, Command};
use m365bot::integration::rotate::SecretTarget;
use m365bot::notify::cards::{case_model, update_model};
use m365bot::notify::event::{CaseEvent, EventSource};
use m365bot::notify::sources::push;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

/// The characters that are markdown in an Adaptive Card TextBlock.
const MARKDOWN: &[char] = &['*', '_', '[', ']', '`', '~', '<', '>', '|'];

/// True when every markdown character of `text` is backslash-escaped and no `://` remains
/// (so no link, emphasis or bare URL can come out of untrusted text).
fn is_inert(text: &str) -> bool {
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
        } else if MARKDOWN.contains(&c) {
            return false;
        }
    }
    !escaped && !text.contains("://")
}

/// Text that is likely to contain markdown, links and JSON / template syntax.
fn hostile_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        any::<String>(),
        Just("[Your session expired](https://evil.example)".to_owned()),
        Just("**bold** _it_ `code` ~~s~~ <https://x> | a | b |".to_owned()),
        Just("\n- item\n1. one\n# head\n> quote\n".to_owned()),
        Just("\\\" {{x}} \u{2028} \\n \\[".to_owned()),
        Just("javascript:alert(1)".to_owned()),
    ];
    proptest::collection::vec(pieces, 0..4).prop_map(|parts| parts.concat())
}

/// The default configuration (`PROPTEST_CASES` sets the number of cases), without failure
/// files: a failure prints its minimal input instead.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

fn print_count(name: &str, counter: &AtomicUsize) {
    eprintln!(
        "property {name}: {} cases passed",
        counter.load(Ordering::SeqCst)
    );
}

#[test]
fn cards_render_arbitrary_strings_as_valid_inert_cards() {
    static CASES: AtomicUsize = AtomicUsize::new(0);
    let cards = CardRenderer::new().expect("templates compile");
    let mut runner = TestRunner::new(config());
    let strategy = (
        hostile_text(),
        hostile_text(),
        hostile_text(),
        proptest::option::of(hostile_text()),
        proptest::option::of(hostile_text()),
    );
    runner
        .run(&strategy, |(title, state, number, note, group)| {
            let event = CaseEvent {
                source: EventSource::ServiceNow,
                case_key: "servicenow:incident:1".to_owned(),
                revision: "1".to_owned(),
                number,
                title,
                state,
                previous_state: None,
                priority: Some("1 - Critical".to_owned()),
                service: None,
                assignment_group: group,
                microsoft_case: None,
                url: None,
                latest_note: note,
                resolved: false,
                updated_at: chrono::Utc::now(),
            };
            for (template, model) in [
                ("teams/notify_case", case_model(&event, false)),
                ("teams/notify_status", case_model(&event, true)),
                ("teams/notify_update", update_model(&event, Some("New"), 1)),
            ] {
                let card = cards.render(template, &model).expect("renders");
                prop_assert_eq!(&card["type"], "AdaptiveCard");
                prop_assert!(card["body"].is_array());
                for field in ["title", "state", "number", "latest_note", "headline"] {
                    if let Some(text) = model.get(field).and_then(Value::as_str) {
                        prop_assert!(is_inert(text), "{} not inert: {:?}", field, text);
                    }
                }
                for fact in model["facts"].as_array().into_iter().flatten() {
                    let value = fact["value"].as_str().unwrap_or_default();
                    prop_assert!(is_inert(value), "fact not inert: {:?}", value);
                }
            }
            CASES.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .expect("property holds");
    print_count("card rendering", &CASES);
}

#[test]
fn markdown_escaping_is_inert_for_any_text() {
    static CASES: AtomicUsize = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config());
    runner
        .run(&hostile_text(), |text| {
            prop_assert!(is_inert(&escape_markdown(&text)));
            CASES.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .expect("property holds");
    print_count("markdown escaping", &CASES);
}

/// The text a user types for `command`.
fn typed(command: &Command) -> String {
    let role = |role: &AppRole| match role {
        AppRole::InsightsUser => "insights_user",
        AppRole::Administrator => "administrator",
    };
    match command {
        Command::Help => "help".to_owned(),
        Command::Setup => "setup".to_owned(),
        Command::SetupStatus => "setup status".to_owned(),
        Command::Doctor { repair } => if *repair { "doctor --repair" } else { "doctor" }.to_owned(),
        Command::LinkAccount => "link-account".to_owned(),
        Command::LinkAccountStatus => "link-account status".to_owned(),
        Command::UnlinkAccount => "unlink-account".to_owned(),
        Command::Grant { user, role: r } => format!("grant {user} {}", role(r)),
        Command::Revoke { user, role: r } => format!("revoke {user} {}", role(r)),
        Command::Roles => "roles".to_owned(),
        Command::Subscribe { filter } => format!("subscribe {filter}"),
        Command::Unsubscribe => "unsubscribe".to_owned(),
        Command::Subscriptions => "subscriptions".to_owned(),
        Command::Status { reference } => format!("status {reference}"),
        Command::RotateSecret { target } => format!("rotate-secret {}", target.word()),
    }
}

/// One word: any non-whitespace characters.
fn word() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        any::<char>().prop_filter("no whitespace", |c| !c.is_whitespace()),
        1..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn words() -> impl Strategy<Value = String> {
    proptest::collection::vec(word(), 1..4).prop_map(|w| w.join(" "))
}

fn command_strategy() -> impl Strategy<Value = Command> {
    let role = prop_oneof![Just(AppRole::InsightsUser), Just(AppRole::Administrator)];
    prop_oneof![
        Just(Command::Help),
        Just(Command::Setup),
        Just(Command::SetupStatus),
        any::<bool>().prop_map(|repair| Command::Doctor { repair }),
        Just(Command::LinkAccount),
        Just(Command::LinkAccountStatus),
        Just(Command::UnlinkAccount),
        (words(), role.clone()).prop_map(|(user, role)| Command::Grant { user, role }),
        (words(), role).prop_map(|(user, role)| Command::Revoke { user, role }),
        Just(Command::Roles),
        proptest::option::of(words()).prop_map(|f| Command::Subscribe {
            filter: f.unwrap_or_default()
        }),
        Just(Command::Unsubscribe),
        Just(Command::Subscriptions),
        word().prop_map(|reference| Command::Status { reference }),
        proptest::sample::select(SecretTarget::ALL.to_vec())
            .prop_map(|target| Command::RotateSecret { target }),
    ]
}

#[test]
fn the_command_parser_never_panics_and_round_trips() {
    static CASES: AtomicUsize = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config());
    runner
        .run(
            &(any::<String>(), command_strategy()),
            |(noise, command)| {
                // Any text parses to a command or an error, without panicking.
                let _ = command::parse(&noise);
                // A command typed as its usage says parses back to itself, with or without prefix.
                let text = typed(&command);
                prop_assert_eq!(command::parse(&text), Ok(command.clone()), "{:?}", text);
                prop_assert_eq!(command::parse(&format!("/m365 {text}")), Ok(command));
                CASES.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .expect("property holds");
    print_count("command parser", &CASES);
}

#[test]
fn signature_headers_parse_boundedly() {
    static CASES: AtomicUsize = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config());
    let header = prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                any::<String>(),
                "[0-9a-f]{64}".prop_map(|hex| format!("v1={hex}")),
                any::<[u8; 32]>().prop_map(|bytes| {
                    use base64::Engine;
                    format!(
                        "v1={}",
                        base64::engine::general_purpose::STANDARD.encode(bytes)
                    )
                }),
            ],
            0..6
        )
        .prop_map(|parts| parts.join(",")),
    ];
    let strategy = (
        header,
        any::<Vec<u8>>(),
        any::<i64>(),
        proptest::collection::vec(any::<u8>(), 0..512),
    );
    runner
        .run(&strategy, |(header, secret, timestamp, body)| {
            match push::signature_candidates(&header) {
                Ok(candidates) => {
                    prop_assert!(header.len() <= push::MAX_SIGNATURE_HEADER);
                    prop_assert!((1..=push::MAX_SIGNATURES).contains(&candidates.len()));
                }
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
            // What the bot's own Business Rule script signs always parses back.
            let signed = push::sign(&secret, timestamp, &body);
            let parsed = push::signature_candidates(&signed).expect("own signature parses");
            prop_assert_eq!(parsed.len(), 1);
            CASES.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .expect("property holds");
    print_count("signature header", &CASES);
}

/// Arbitrary JSON, up to three levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(json!("msteams")),
        Just(json!("message")),
        Just(json!("invoke")),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Activity field names (so the arbitrary JSON reaches the deeper checks) or anything.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "type",
            "id",
            "text",
            "value",
            "name",
            "from",
            "recipient",
            "conversation",
            "channelData",
            "serviceUrl",
            "channelId",
            "entities",
            "tenant",
            "tenantId",
            "conversationType",
            "aadObjectId",
            "action",
            "verb",
            "data",
            "replyToId",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

#[test]
fn activities_of_arbitrary_json_get_a_2xx_or_4xx_never_a_5xx() {
    static CASES: AtomicUsize = AtomicUsize::new(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (bot, fake) = runtime.block_on(async {
        let fake = support::connector::FakeConnector::start().await;
        let bot = support::TestApp::spawn(&format!(
            "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"{}\"\n\
             allowed_service_url_hosts = [\"127.0.0.1\"]\n",
            support::TEST_TENANT_ID
        ))
        .await;
        (bot, fake)
    });
    // A valid channel message whose fields are replaced by arbitrary JSON.
    let base = json!({
        "type": "message",
        "id": "1",
        "channelId": "msteams",
        "serviceUrl": fake.service_url(),
        "from": {"id": "29:user", "aadObjectId": "7c1e0f4a-0000-4000-8000-000000000001"},
        "recipient": {"id": "28:bot"},
        "conversation": {"id": "19:ops@thread.tacv2", "conversationType": "channel",
                         "tenantId": support::TEST_TENANT_ID},
        "channelData": {"tenant": {"id": support::TEST_TENANT_ID}},
        "text": "help",
    });
    let activity = prop_oneof![
        json_value(),
        proptest::collection::vec((key(), json_value()), 1..4).prop_map(move |changes| {
            let mut activity = base.clone();
            for (field, value) in changes {
                activity[field] = value;
            }
            activity
        }),
    ];
    let mut runner = TestRunner::new(config());
    runner
        .run(&activity, |body| {
            let status = runtime.block_on(async {
                bot.client
                    .post(format!("{}/api/messages", bot.base_url))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("the bot answers")
                    .status()
            });
            prop_assert!(
                status.is_success() || status.is_client_error(),
                "{} for {}",
                status,
                body
            );
            CASES.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .expect("property holds");
    print_count("activity deserialisation", &CASES);
    drop(bot);
}
