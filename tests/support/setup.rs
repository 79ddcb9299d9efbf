//! Test helpers of the setup feature: the emulators, a fake connector, and a bot on a
//! database file that survives the bot (for restart tests), driven over HTTP like Teams does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use m365bot::app::{App, Application};
use m365bot::config::Settings;
use m365bot::sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::connector::{FakeConnector, connector_settings_toml};

/// The ServiceNow admin's Teams id in these tests.
pub const ADMIN: &str = "29:admin";
/// A second ServiceNow admin (beth.anglin holds admin? no: a second chat user mapped to admin).
pub const ADMIN_TWO: &str = "29:admin-two";
/// A chat user without the admin role.
pub const JANE: &str = "29:jane";
/// The Microsoft 365 admin the completion card is handed to.
pub const M365_ADMIN: &str = "29:fred";
/// The 1:1 conversation of [`ADMIN`].
pub const PERSONAL: &str = "a:admin-personal";

/// Everything a wizard test needs.
pub struct World {
    /// The emulators.
    pub sandbox: Sandbox,
    /// The fake Bot Connector.
    pub connector: FakeConnector,
    /// The bot's settings (TOML) without the database.
    pub toml: String,
    /// The database file's directory (outlives bots).
    pub dir: tempfile::TempDir,
    /// The encryption key configured.
    pub key: String,
}

/// A running bot.
pub struct Bot {
    /// Base URL.
    pub base_url: String,
    /// Shared state.
    pub app: Arc<App>,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl World {
    /// Starts the emulators and the fake connector, with the default options.
    pub async fn start() -> Self {
        Self::start_with(SandboxOptions::default(), None).await
    }

    /// Starts with emulator options; `bot_account` replaces the bot's ServiceNow account
    /// (user, password).
    pub async fn start_with(options: SandboxOptions, bot_account: Option<(&str, &str)>) -> Self {
        let sandbox = Sandbox::start(options).await.expect("sandbox starts");
        let connector = FakeConnector::start().await;
        connector.add_member(
            ADMIN,
            "System Administrator",
            "admin@contoso.onmicrosoft.com",
            "00000000-0000-4000-8000-000000000001",
        );
        connector.add_member(
            ADMIN_TWO,
            "System Administrator (phone)",
            "admin@contoso.onmicrosoft.com",
            "00000000-0000-4000-8000-000000000001",
        );
        connector.add_member(
            JANE,
            "Jane Doe",
            "jane.doe@contoso.onmicrosoft.com",
            "00000000-0000-4000-8000-000000000002",
        );
        connector.add_member(
            M365_ADMIN,
            "Fred Luddy",
            "fred.luddy@contoso.onmicrosoft.com",
            "00000000-0000-4000-8000-000000000003",
        );
        let demo = sandbox.demo().clone();
        let urls = sandbox.urls().clone();
        let key = m365bot::setup::crypto::generate_key().expect("key");
        let (user, password) = bot_account.unwrap_or((
            demo.servicenow_admin_user.as_str(),
            demo.servicenow_admin_password.as_str(),
        ));
        let rest = format!(
            "[servicenow]\ninstance_url = \"{}\"\nusername = \"{user}\"\npassword = \"{password}\"\n\
             [entra]\nauthority_url = \"{}/\"\ngraph_url = \"{}/\"\ngraph_client_id = \"{}\"\ngraph_client_secret = \"{}\"\n\
             [setup]\nencryption_key = \"{key}\"\n[bot]\nauth_mode = \"insecure-local\"\napp_password = \"\"\n",
            urls.servicenow,
            urls.entra,
            urls.graph_v1(),
            demo.graph_client_id,
            demo.graph_client_secret,
        );
        let toml = super::merge_toml(&connector_settings_toml(&connector), &rest);
        Self {
            sandbox,
            connector,
            toml,
            dir: tempfile::tempdir().expect("temp dir"),
            key,
        }
    }

    /// The database file every bot of this world uses.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("setup.db")
    }

    /// The settings of a bot on the world's database with `extra` TOML merged in.
    pub fn settings_with(&self, extra: &str) -> Settings {
        let base = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n",
            self.db_path().display()
        );
        let toml = super::merge_toml(&super::merge_toml(&base, &self.toml), extra);
        Settings::from_toml_str(&toml).expect("settings")
    }

    /// Starts a bot on the world's database with `extra` TOML merged in.
    pub async fn bot_with(&self, extra: &str) -> Bot {
        let settings = self.settings_with(extra);
        let application = Application::build(settings).await.expect("bot builds");
        let addr = application.local_addr();
        let app = application.app();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move { application.run_until_stopped(stop).await });
        Bot {
            base_url: format!("http://{addr}"),
            app,
            client: reqwest::Client::new(),
            shutdown,
        }
    }

    /// Starts a bot on the world's database.
    pub async fn bot(&self) -> Bot {
        self.bot_with("").await
    }

    /// The card of the last message the bot sent through the connector.
    pub fn last_sent_card(&self) -> Value {
        let requests = self.connector.requests();
        let last = requests.last().expect("the bot sent something");
        last.body["attachments"][0]["content"].clone()
    }
}

fn activity(
    world: &World,
    kind: &str,
    from: &str,
    conversation: &str,
    conversation_type: &str,
) -> Value {
    json!({
        "type": kind,
        "id": format!("act-{}", rand_id()),
        "channelId": "msteams",
        "serviceUrl": world.connector.service_url(),
        "from": {"id": from, "name": "Test user"},
        "recipient": {"id": "28:bot", "name": "m365bot"},
        "conversation": {"id": conversation, "conversationType": conversation_type, "tenantId": super::TEST_TENANT_ID},
        "channelData": {"tenant": {"id": super::TEST_TENANT_ID}},
    })
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Bot {
    /// Posts an activity; returns the HTTP status and the JSON body (Null when empty).
    pub async fn post(&self, activity: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/api/messages", self.base_url))
            .json(activity)
            .send()
            .await
            .expect("the bot answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `text` typed by `from` in a 1:1 chat; returns the card the bot replied with.
    pub async fn say(&self, world: &World, from: &str, text: &str) -> Value {
        let before = world.connector.requests().len();
        let mut message = activity(world, "message", from, PERSONAL, "personal");
        message["text"] = json!(text);
        let (status, _) = self.post(&message).await;
        assert_eq!(status, 200, "message accepted");
        world
            .connector
            .wait_for_requests(before + 1, Duration::from_secs(20))
            .await;
        world.last_sent_card()
    }

    /// `text` typed in a channel by `from`; returns the HTTP status.
    pub async fn say_in_channel(&self, world: &World, from: &str, text: &str) -> u16 {
        let mut message = activity(
            world,
            "message",
            from,
            "19:channel@thread.tacv2;messageid=1",
            "channel",
        );
        message["text"] = json!(text);
        message["channelData"]["team"] = json!({"id": "19:team"});
        message["channelData"]["channel"] = json!({"id": "19:channel@thread.tacv2"});
        self.post(&message).await.0
    }

    /// Presses the button titled `title` on `card` as `from` (1:1), with `inputs` merged into
    /// its data as Teams does; returns the card of the invoke response.
    pub async fn press(
        &self,
        world: &World,
        from: &str,
        card: &Value,
        title: &str,
        inputs: Value,
    ) -> Value {
        let invoke = self.invoke_activity(world, from, card, title, inputs);
        self.send_invoke(&invoke).await
    }

    /// The invoke activity of a button press (without sending it).
    pub fn invoke_activity(
        &self,
        world: &World,
        from: &str,
        card: &Value,
        title: &str,
        inputs: Value,
    ) -> Value {
        let action = find_action(card, title);
        let mut data = action["data"].clone();
        if let (Some(data), Value::Object(inputs)) = (data.as_object_mut(), inputs) {
            data.extend(inputs);
        }
        let mut invoke = activity(world, "invoke", from, PERSONAL, "personal");
        invoke["name"] = json!("adaptiveCard/action");
        invoke["replyToId"] = json!("card-1");
        invoke["value"] = json!({"action": {"type": "Action.Execute", "verb": action["verb"], "data": data}, "trigger": "manual"});
        invoke
    }

    /// Sends an invoke activity; returns the card of the response.
    pub async fn send_invoke(&self, invoke: &Value) -> Value {
        let (status, body) = self.post(invoke).await;
        assert_eq!(status, 200, "invoke answered: {body}");
        assert_eq!(
            body["type"], "application/vnd.microsoft.card.adaptive",
            "{body}"
        );
        body["value"].clone()
    }
}

/// The action titled `title` of a card; panics with the titles present.
pub fn find_action(card: &Value, title: &str) -> Value {
    let mut actions = card["actions"].as_array().cloned().unwrap_or_default();
    // Buttons of ActionSets in the body too.
    fn action_sets(value: &Value, out: &mut Vec<Value>) {
        match value {
            Value::Object(map) => {
                if map.get("type").and_then(Value::as_str) == Some("ActionSet") {
                    out.extend(map["actions"].as_array().cloned().unwrap_or_default());
                }
                map.values().for_each(|v| action_sets(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| action_sets(v, out)),
            _ => {}
        }
    }
    action_sets(&card["body"], &mut actions);
    actions
        .iter()
        .find(|a| a["title"] == title)
        .cloned()
        .unwrap_or_else(|| {
            let titles: Vec<&Value> = actions.iter().map(|a| &a["title"]).collect();
            panic!(
                "no action {title:?} on the card; actions: {titles:?}; card: {}",
                card_text(card)
            )
        })
}

/// Every text of a card, joined (for assertions).
pub fn card_text(card: &Value) -> String {
    let mut out = Vec::new();
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if matches!(
                        key.as_str(),
                        "text" | "title" | "label" | "value" | "placeholder"
                    ) && let Some(s) = v.as_str()
                    {
                        out.push(s.to_owned());
                    }
                    walk(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(card, &mut out);
    out.join(" | ")
}

/// The step title of a wizard card (its heading).
pub fn heading(card: &Value) -> String {
    card["body"][0]["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["style"] == "heading"))
        .and_then(|i| i["text"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Inputs of the "create it for me" choice.
pub fn create() -> Value {
    json!({"mode": "create"})
}

/// Walks the AAD branch as the admin, every piece created by the bot, to the cross-scope step;
/// `start` holds the Start-setup inputs besides `auth`. Returns the cross-scope step's card.
pub async fn aad_created_to_cross_scope(bot: &Bot, world: &World, start: Value) -> Value {
    let consent = bot.say(world, ADMIN, "setup").await;
    let env = bot.press(world, ADMIN, &consent, "Agree", json!({})).await;
    let mut inputs = start;
    inputs["auth"] = json!("aad");
    let tenant = bot.press(world, ADMIN, &env, "Start setup", inputs).await;
    let mut card = bot
        .press(
            world,
            ADMIN,
            &tenant,
            "Verify and continue",
            json!({"domain": "contoso.onmicrosoft.com"}),
        )
        .await;
    for _ in 0..7 {
        card = bot.press(world, ADMIN, &card, "Continue", create()).await;
    }
    assert_eq!(
        heading(&card),
        "Cross-scope access to oauth_entity",
        "{}",
        card_text(&card)
    );
    card
}
