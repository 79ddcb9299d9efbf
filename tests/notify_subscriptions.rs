//! `subscribe`, `unsubscribe`, `subscriptions` and `status`: role checks against the
//! ServiceNow emulator, filter usage errors, and the cards (rendered by the shared renderer).

mod support;

use m365bot::core::command::Command;
use m365bot::core::{Actor, ConversationAddress, EventKind, InboundEvent, Platform, Reply};
use m365bot::notify::{self, outbox};
use m365bot::sandbox::{Sandbox, SandboxOptions};
use serde_json::Value;
use support::TestApp;
use support::connector::FakeConnector;

const CHANNEL: &str = "19:ops@thread.tacv2";

async fn setup() -> (Sandbox, FakeConnector, TestApp) {
    let sandbox = Sandbox::start(SandboxOptions::default())
        .await
        .expect("sandbox starts");
    let connector = FakeConnector::start().await;
    let demo = sandbox.demo().clone();
    let toml = format!(
        "{}\n[servicenow]\ninstance_url = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\n[notifications]\ndeliver = false\n",
        support::connector::connector_settings_toml(&connector),
        sandbox.urls().servicenow,
        demo.servicenow_admin_user,
        demo.servicenow_admin_password,
    );
    let app = TestApp::spawn(&toml).await;
    connector.add_member(
        "29:beth",
        "Beth Anglin",
        "beth.anglin@contoso.onmicrosoft.com",
        "7c1e0f4a-0000-4000-8000-000000000004",
    );
    connector.add_member(
        "29:abel",
        "Abel Tuter",
        "abel.tuter@contoso.onmicrosoft.com",
        "7c1e0f4a-0000-4000-8000-000000000005",
    );
    (sandbox, connector, app)
}

fn event(connector: &FakeConnector, user_id: &str) -> InboundEvent {
    InboundEvent {
        actor: Actor {
            user_id: user_id.to_owned(),
            aad_object_id: None,
            name: None,
        },
        platform: Platform::Teams,
        conversation_id: CHANNEL.to_owned(),
        conversation_type: "channel".to_owned(),
        address: ConversationAddress {
            service_url: connector.service_url(),
            tenant_id: support::TEST_TENANT_ID.to_owned(),
            bot_id: "28:bot".to_owned(),
            thread_conversation_id: format!("{CHANNEL};messageid=1"),
            channel_id: Some(CHANNEL.to_owned()),
            team_id: Some("19:team@thread.tacv2".to_owned()),
            ..ConversationAddress::default()
        },
        mentions: Vec::new(),
        kind: EventKind::Message(String::new()),
    }
}

fn parts(reply: &Reply) -> (&'static str, &Value) {
    let Reply::Card { template, data } = reply;
    (template, data)
}

async fn run(app: &TestApp, connector: &FakeConnector, user: &str, command: Command) -> Reply {
    let mut replies = notify::handle_command(&app.app, &event(connector, user), command).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let reply = replies.remove(0);
    // Every reply renders with the shared renderer (as the Teams adapter does).
    let (template, data) = parts(&reply);
    app.app
        .cards
        .render(&format!("teams/{template}"), data)
        .unwrap_or_else(|e| panic!("{template}: {e}"));
    reply
}

#[tokio::test]
async fn subscribe_list_status_and_unsubscribe() {
    let (_sandbox, connector, app) = setup().await;
    let subscribe = |filter: &str| Command::Subscribe {
        filter: filter.to_owned(),
    };

    // A user without the insights or administrator role is refused, naming the role.
    let refused = run(&app, &connector, "29:abel", subscribe("")).await;
    let (_, data) = parts(&refused);
    assert!(
        data.to_string()
            .contains("x_mioms_m365_assis.administrator"),
        "the refusal names the role a channel needs: {data}"
    );

    // A bad filter gets a usage error.
    let bad = run(&app, &connector, "29:beth", subscribe("colour=red")).await;
    let (template, data) = parts(&bad);
    assert_eq!(template, "notice");
    assert_eq!(data["title"], "That filter is not valid");
    assert!(data["text"].as_str().is_some_and(|t| t.contains("colour")));
    assert!(
        data["next_step"]
            .as_str()
            .is_some_and(|t| t.contains("subscribe [source="))
    );

    // Every value is checked against what the sources can produce: a filter that can never
    // match is refused with the accepted values, and nothing is stored.
    for (filter, needle, accepted) in [
        ("priority=banana", "priority=banana", "\"1 - Critical\""),
        ("priority=9", "priority=9", "advisory"),
        (
            r#"group="No Such Team""#,
            "group=No Such Team",
            "no assignment group",
        ),
        (
            "service=Frobnication",
            "service=Frobnication",
            "\"Inquiry / Help\"",
        ),
    ] {
        let refused = run(&app, &connector, "29:beth", subscribe(filter)).await;
        let (template, data) = parts(&refused);
        assert_eq!(template, "notice", "{filter}");
        assert_eq!(
            data["title"], "That filter is not valid",
            "{filter}: {data}"
        );
        let text = data["text"].as_str().unwrap_or_default();
        assert!(text.contains(needle), "{filter}: {text}");
        assert!(text.contains("can never match"), "{filter}: {text}");
        assert!(
            text.contains(accepted),
            "{filter}: names what is accepted: {text}"
        );
    }
    let listed = run(&app, &connector, "29:beth", Command::Subscriptions).await;
    assert!(
        !parts(&listed).1.to_string().contains("banana"),
        "a refused filter is never listed"
    );
    // Values the sources produce pass: the instance's choice labels, service-health
    // classifications, the case table's service choices, existing groups.
    for filter in [
        r#"priority="2 - High",advisory source=servicenow"#,
        r#"service=software,"Inquiry / Help" group="Microsoft 365 Support""#,
    ] {
        let ok = run(&app, &connector, "29:beth", subscribe(filter)).await;
        assert_eq!(
            parts(&ok).1["title"],
            "Subscribed",
            "{filter}: {:?}",
            parts(&ok).1
        );
        run(&app, &connector, "29:beth", Command::Unsubscribe).await;
    }

    let filter = r#"source=servicenow priority=1,2 group="Service Desk" changes-only"#;
    let ok = run(&app, &connector, "29:beth", subscribe(filter)).await;
    assert_eq!(parts(&ok).1["title"], "Subscribed");
    assert!(
        parts(&ok).1["text"]
            .as_str()
            .is_some_and(|t| t.contains(filter))
    );
    let again = run(&app, &connector, "29:beth", subscribe(filter)).await;
    assert_eq!(parts(&again).1["title"], "Already subscribed");

    // An incident update is routed to the channel.
    let mut update = support::notify::incident(42, 1, "In Progress");
    update.priority = Some("1 - Critical".to_owned());
    let recorded = outbox::record_event(&app.app.db, &update)
        .await
        .expect("record");
    assert_eq!(recorded.deliveries, 1);

    let listed = run(&app, &connector, "29:beth", Command::Subscriptions).await;
    let (template, data) = parts(&listed);
    assert_eq!(template, "notify_subscriptions");
    let items = data["subscriptions"].as_array().expect("list");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["filter"], filter);
    assert_eq!(items[0]["status"], "Active");
    assert!(
        items[0]["counts"]
            .as_str()
            .is_some_and(|c| c.contains("1 waiting"))
    );
    assert!(
        items[0]["created"]
            .as_str()
            .is_some_and(|c| c.contains("Beth Anglin"))
    );

    let status = run(
        &app,
        &connector,
        "29:beth",
        Command::Status {
            reference: update.number.clone(),
        },
    )
    .await;
    let (template, data) = parts(&status);
    assert_eq!(template, "notify_status");
    assert_eq!(data["state"], "In Progress");
    assert_eq!(data["tone"], "attention");
    assert_eq!(data["live"], false, "from the last recorded update");

    let unknown = run(
        &app,
        &connector,
        "29:beth",
        Command::Status {
            reference: "INC9999999".to_owned(),
        },
    )
    .await;
    let (template, data) = parts(&unknown);
    assert_eq!(template, "notice");
    assert!(
        data["text"]
            .as_str()
            .is_some_and(|t| t.contains("INC9999999")),
        "{data}"
    );

    let gone = run(&app, &connector, "29:beth", Command::Unsubscribe).await;
    assert_eq!(parts(&gone).1["title"], "Unsubscribed");
    let listed = run(&app, &connector, "29:beth", Command::Subscriptions).await;
    assert_eq!(
        parts(&listed).1["subscriptions"].as_array().map(Vec::len),
        Some(0)
    );
    let none = run(&app, &connector, "29:beth", Command::Unsubscribe).await;
    assert_eq!(parts(&none).1["title"], "No subscriptions here");
}

#[test]
fn the_commands_are_in_the_help_card() {
    let usages: Vec<&str> = notify::COMMANDS.iter().map(|c| c.usage).collect();
    assert_eq!(
        usages,
        [
            "subscribe [filter]",
            "unsubscribe",
            "subscriptions",
            "status <case or incident>"
        ]
    );
}

async fn run_in(
    app: &TestApp,
    connector: &FakeConnector,
    user: &str,
    conversation_type: &str,
    command: Command,
) -> Reply {
    let mut event = event(connector, user);
    event.conversation_type = conversation_type.to_owned();
    if conversation_type != "channel" {
        event.conversation_id = format!("19:{conversation_type}-of-{user}");
    }
    let mut replies = notify::handle_command(&app.app, &event, command).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let reply = replies.remove(0);
    let (template, data) = parts(&reply);
    app.app
        .cards
        .render(&format!("teams/{template}"), data)
        .unwrap_or_else(|e| panic!("{template}: {e}"));
    reply
}

#[tokio::test]
async fn channels_need_the_administrator_role_to_subscribe() {
    let (_sandbox, connector, app) = setup().await;
    connector.add_member(
        "29:jane",
        "Jane Doe",
        "jane.doe@contoso.onmicrosoft.com",
        "7c1e0f4a-0000-4000-8000-000000000006",
    );
    let subscribe = || Command::Subscribe {
        filter: String::new(),
    };
    // Jane holds insights_user only: refused in a channel and a group chat, naming the role.
    for conversation_type in ["channel", "groupChat"] {
        let refused = run_in(&app, &connector, "29:jane", conversation_type, subscribe()).await;
        let (_, data) = parts(&refused);
        assert_eq!(data["title"], "You need another ServiceNow role", "{data}");
        assert!(
            data["text"]
                .as_str()
                .is_some_and(|t| t.contains("x_mioms_m365_assis.administrator")
                    && !t.contains("insights_user")),
            "{data}"
        );
        let refused = run_in(
            &app,
            &connector,
            "29:jane",
            conversation_type,
            Command::Unsubscribe,
        )
        .await;
        assert_eq!(
            parts(&refused).1["title"],
            "You need another ServiceNow role"
        );
    }
    // In her personal chat insights_user is enough.
    let ok = run_in(&app, &connector, "29:jane", "personal", subscribe()).await;
    assert_eq!(parts(&ok).1["title"], "Subscribed");
    // The administrator may subscribe the channel; the list says who did.
    let ok = run_in(&app, &connector, "29:beth", "channel", subscribe()).await;
    assert_eq!(parts(&ok).1["title"], "Subscribed");
    let listed = run_in(
        &app,
        &connector,
        "29:jane",
        "channel",
        Command::Subscriptions,
    )
    .await;
    assert!(
        parts(&listed).1["subscriptions"][0]["created"]
            .as_str()
            .is_some_and(|c| c.contains("Beth Anglin")),
        "{listed:?}"
    );
}

#[tokio::test]
async fn status_reads_only_support_cases_of_reference_shape() {
    let (_sandbox, connector, app) = setup().await;
    let status = |reference: &str| Command::Status {
        reference: reference.to_owned(),
    };
    // INC0010001 tracks a Microsoft support case: read live.
    let case = run(&app, &connector, "29:beth", status("INC0010001")).await;
    let (template, data) = parts(&case);
    assert_eq!(template, "notify_status", "{data}");
    assert_eq!(data["live"], true);
    // The Microsoft case number finds it too.
    let by_case = run(&app, &connector, "29:beth", status("2502170040001234")).await;
    assert_eq!(parts(&by_case).0, "notify_status");
    // INC0010003 (the jammed printer) tracks no Microsoft case: outside the case filter.
    let printer = run(&app, &connector, "29:beth", status("INC0010003")).await;
    let (template, data) = parts(&printer);
    assert_eq!(template, "notice");
    assert_eq!(data["title"], "Not a Microsoft 365 support case", "{data}");
    assert!(!data.to_string().contains("Printer"), "{data}");
    // Values that are not a reference are never looked up.
    for hostile in [
        "INC0010003^ORactive=true",
        "x^NQactive=true",
        "[Session expired](https://evil.example)",
        "INC0010001\nactive=true",
        "javascript:gs.getUser()",
        &"A".repeat(41),
    ] {
        let refused = run(&app, &connector, "29:beth", status(hostile)).await;
        let (template, data) = parts(&refused);
        assert_eq!(template, "notice", "{hostile}");
        assert_eq!(
            data["title"], "Not a Microsoft 365 support case",
            "{hostile}"
        );
        assert!(!data.to_string().contains("](https://"), "{data}");
    }
}
