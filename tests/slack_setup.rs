//! The setup wizard in Slack modals, end to end over HTTP: signed slash commands and
//! interactions posted to a running bot, the emulated Slack Web API (views.open / update,
//! submissions applied as Slack applies them) and the ServiceNow, Entra and Graph emulators
//! behind it.

mod support;

use m365bot::sandbox::slack::{
    SANDBOX_APP_TOKEN, SANDBOX_BOT_TOKEN, SANDBOX_SIGNING_SECRET, SANDBOX_TEAM_ID, SlackEmulator,
    SlackHandle, WindowInput, act_in_window,
};
use m365bot::slack::verify::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};
use support::setup::{Bot, World};

const ADMIN: &str = "U0ADMIN";
const JANE: &str = "U0JANE";

struct Harness {
    world: World,
    slack: SlackEmulator,
    bot: Bot,
    /// Slack reaches the bot over Socket Mode rather than its request URLs.
    socket: bool,
}

impl Harness {
    async fn start() -> Self {
        Self::start_on("http").await
    }

    /// With the `http` or `socket` transport.
    async fn start_on(transport: &str) -> Self {
        let world = World::start().await;
        let slack = SlackEmulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            &world.sandbox.demo().tenant_domain,
        )
        .await
        .expect("the Slack emulator starts");
        let bot = world
            .bot_with(&format!(
                "[slack]\nenabled = true\ntransport = \"{transport}\"\nbot_token = \"{SANDBOX_BOT_TOKEN}\"\n\
                 signing_secret = \"{SANDBOX_SIGNING_SECRET}\"\napp_token = \"{SANDBOX_APP_TOKEN}\"\n\
                 api_url = \"{}\"\n",
                slack.api_url()
            ))
            .await;
        let h = Self {
            world,
            slack,
            bot,
            socket: transport == "socket",
        };
        let started = Instant::now();
        while h.socket && !h.handle().socket_connections().1 {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the bot never opened its Socket Mode connection"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        h
    }

    fn handle(&self) -> SlackHandle {
        self.slack.handle()
    }

    /// Types `/m365 <text>` as `user`; returns the immediate answer and the response-URL id.
    async fn command(&self, user: &str, text: &str) -> (Value, String) {
        if self.socket {
            let (envelope, ticket) = self.handle().socket_command(user, "C0GENERAL", text);
            return (socket_ack(self, &envelope).await, ticket.response_id);
        }
        let ticket = self.handle().new_command("C0GENERAL", user);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", "unused")
            .append_pair("team_id", SANDBOX_TEAM_ID)
            .append_pair("channel_id", "C0GENERAL")
            .append_pair("user_id", user)
            .append_pair("user_name", user)
            .append_pair("command", "/m365")
            .append_pair("text", text)
            .append_pair("response_url", &ticket.response_url)
            .append_pair("trigger_id", &ticket.trigger_id)
            .finish();
        let ts = chrono::Utc::now().timestamp().to_string();
        let signature = sign(SANDBOX_SIGNING_SECRET.as_bytes(), &ts, form.as_bytes());
        let response = reqwest::Client::new()
            .post(format!(
                "{}{}",
                self.bot.base_url,
                m365bot::slack::COMMANDS_PATH
            ))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(TIMESTAMP_HEADER, ts)
            .header(SIGNATURE_HEADER, signature)
            .body(form)
            .send()
            .await
            .expect("the bot answers");
        assert_eq!(response.status(), 200);
        (
            response.json().await.expect("JSON answer"),
            ticket.response_id,
        )
    }

    /// `user`'s open window once the bot is done with it (no "Checking…" / "Working…").
    async fn settled(&self, user: &str) -> Value {
        let started = Instant::now();
        loop {
            if let Some(view) = self.handle().current_view(user)
                && !view.to_string().contains(":hourglass_flowing_sand:")
            {
                return view;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no settled window: {:?}",
                self.handle().current_view(user)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/m365 setup` as `user`: the window it opens, settled.
    async fn open_setup(&self, user: &str) -> Value {
        let (ack, _) = self.command(user, "setup").await;
        assert!(ack.to_string().contains("window"), "{ack}");
        self.settled(user).await
    }

    /// Submits `user`'s open window with `values` typed in, as Slack does; the window after.
    async fn submit(&self, user: &str, values: Value) -> Value {
        let values: Map<String, Value> = values.as_object().cloned().unwrap_or_default();
        act_in_window(
            &self.bot.base_url,
            self.slack.url(),
            user,
            WindowInput::Submit(values),
        )
        .await
        .expect("the submission is answered as Slack accepts");
        self.settled(user).await
    }

    /// Clicks the button `action_id` in `user`'s open window; the window after.
    async fn click(&self, user: &str, action_id: &str) -> Value {
        act_in_window(
            &self.bot.base_url,
            self.slack.url(),
            user,
            WindowInput::Click(action_id.to_owned(), Map::new()),
        )
        .await
        .expect("the click is answered");
        self.settled(user).await
    }

    fn apps_named(&self, suffix: &str) -> usize {
        self.world
            .sandbox
            .handle()
            .apps()
            .iter()
            .filter(|a| a.display_name == format!("Microsoft 365 support {suffix}"))
            .count()
    }

    /// Everything the bot showed or posted in Slack, as one string.
    fn everything_shown(&self) -> String {
        let mut all: Vec<String> = self
            .handle()
            .view_history()
            .iter()
            .map(Value::to_string)
            .collect();
        all.extend(
            self.handle()
                .messages()
                .iter()
                .map(|m| format!("{} {}", m.text, m.blocks)),
        );
        all.join("\n")
    }
}

fn header(view: &Value) -> String {
    view["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["type"] == "header")
        .and_then(|b| b["text"]["text"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn expect_step(view: &Value, title: &str) {
    assert_eq!(
        header(view),
        title,
        "{}",
        m365bot::sandbox::slack::view_text(view)
    );
}

/// From `/m365 setup` to the tenant step of the AAD or Basic branch.
async fn to_tenant(h: &Harness, basic: bool) -> Value {
    let consent = h.open_setup(ADMIN).await;
    expect_step(&consent, "What setup will do");
    assert_eq!(consent["submit"]["text"], "Agree");
    let env = h.submit(ADMIN, json!({})).await;
    expect_step(&env, "Environment and authentication type");
    let tenant = h
        .submit(
            ADMIN,
            json!({"test_environment": "true", "auth": if basic { "basic" } else { "aad" }}),
        )
        .await;
    expect_step(&tenant, "Microsoft 365 tenant");
    tenant
}

/// The stored secrets of the completed setup, in clear.
async fn stored_secrets(h: &Harness) -> Vec<String> {
    let row = m365bot::setup::store::latest_completed(&h.bot.app.db)
        .await
        .expect("reads")
        .expect("a completed setup");
    let key = secrecy::SecretString::from(h.world.key.clone());
    let secret_box = m365bot::setup::crypto::SecretBox::new(Some(&key)).expect("key");
    let secrets = m365bot::setup::flow::open_secrets(&secret_box, &row).expect("opens");
    secrets
        .0
        .values()
        .map(|s| secrecy::ExposeSecret::expose_secret(s).to_owned())
        .collect()
}

#[tokio::test]
async fn aad_branch_in_modals_creates_everything_resumes_and_never_shows_a_secret() {
    aad_branch_in_modals_creates_everything_resumes_and_never_shows_a_secret_on("http").await;
}

#[tokio::test]
async fn aad_branch_in_modals_creates_everything_resumes_and_never_shows_a_secret_over_socket_mode()
{
    aad_branch_in_modals_creates_everything_resumes_and_never_shows_a_secret_on("socket").await;
}

async fn aad_branch_in_modals_creates_everything_resumes_and_never_shows_a_secret_on(
    transport: &str,
) {
    let h = Harness::start_on(transport).await;
    let tenant = to_tenant(&h, false).await;
    assert!(
        tenant["private_metadata"]
            .as_str()
            .is_some_and(|m| m.starts_with("{\"setup_id\":") && m.contains("\"version\":")),
        "only the setup id and version: {}",
        tenant["private_metadata"]
    );
    // Typing the command again resumes the same step in a new window.
    let again = h.open_setup(ADMIN).await;
    expect_step(&again, "Microsoft 365 tenant");
    assert!(again.to_string().contains("Setup resumes where it was."));
    let view = h
        .submit(ADMIN, json!({"domain": "contoso.onmicrosoft.com"}))
        .await;
    expect_step(&view, "Outbound Entra app");
    for next in [
        "ServiceNow outbound OAuth provider",
        "Inbound REST API Entra app",
        "ServiceNow OIDC provider configuration",
        "ServiceNow OIDC entity",
        "REST-user Entra app",
        "Integration user",
        "Cross-scope access to oauth_entity",
    ] {
        let view = h.submit(ADMIN, json!({"mode": "create"})).await;
        expect_step(&view, next);
    }
    // "Check again" is a button in the window (block_actions → views.update).
    let complete = h.click(ADMIN, "setup.cross_scope").await;
    let text = m365bot::sandbox::slack::view_text(&complete);
    assert!(text.contains("Setup complete"), "{text}");
    for label in ["Repository ID", "Endpoint", "AAD Auth", "Client secret"] {
        assert!(text.contains(label), "{label} missing: {text}");
    }
    assert_eq!(h.apps_named("outbound"), 1);
    assert_eq!(h.apps_named("inbound REST API"), 1);
    assert_eq!(h.apps_named("REST user"), 1);
    // No secret the setup stored was ever in a window or a message.
    let secrets = stored_secrets(&h).await;
    assert!(!secrets.is_empty());
    let shown = h.everything_shown();
    for secret in secrets {
        assert!(!shown.contains(&secret), "a secret was shown in Slack");
    }
    // Every answer was one Slack accepts, and no message went to a channel.
    assert!(
        h.handle()
            .messages()
            .iter()
            .all(|m| m.ephemeral_to.is_some()),
        "{:?}",
        h.handle().messages()
    );
}

#[tokio::test]
async fn basic_branch_in_modals_then_doctor_with_repair_answers_ephemerally() {
    basic_branch_in_modals_then_doctor_with_repair_answers_ephemerally_on("http").await;
}

#[tokio::test]
async fn basic_branch_in_modals_then_doctor_with_repair_answers_ephemerally_over_socket_mode() {
    basic_branch_in_modals_then_doctor_with_repair_answers_ephemerally_on("socket").await;
}

async fn basic_branch_in_modals_then_doctor_with_repair_answers_ephemerally_on(transport: &str) {
    let h = Harness::start_on(transport).await;
    to_tenant(&h, true).await;
    let view = h
        .submit(ADMIN, json!({"domain": "contoso.onmicrosoft.com"}))
        .await;
    expect_step(&view, "Outbound Entra app");
    let view = h.submit(ADMIN, json!({"mode": "create"})).await;
    expect_step(&view, "ServiceNow outbound OAuth provider");
    let view = h.submit(ADMIN, json!({"mode": "create"})).await;
    expect_step(&view, "Integration user");
    assert!(view.to_string().contains("step 6 of 8"), "{view}");
    let view = h
        .submit(
            ADMIN,
            json!({"mode": "create", "user_name": "m365_integration"}),
        )
        .await;
    expect_step(&view, "Cross-scope access to oauth_entity");
    let complete = h.click(ADMIN, "setup.cross_scope").await;
    let text = m365bot::sandbox::slack::view_text(&complete);
    assert!(
        text.contains("Basic Auth") && text.contains("m365_integration"),
        "{text}"
    );
    let users = h
        .world
        .sandbox
        .handle()
        .sn_query("sys_user", "user_name=m365_integration")
        .expect("table");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["web_service_access_only"], "true");
    // Run tests from the window.
    let results = h.click(ADMIN, "setup.run_tests").await;
    assert!(
        m365bot::sandbox::slack::view_text(&results).contains("0 failed"),
        "{}",
        m365bot::sandbox::slack::view_text(&results)
    );
    // doctor --repair works in Slack for the admin, refused for jane, both ephemeral.
    let (ack, response_id) = h.command(ADMIN, "doctor --repair").await;
    assert!(ack.to_string().contains("Working on"), "{ack}");
    let answer = wait_for_response(&h, &response_id).await;
    assert!(answer.contains("Doctor (with repair)"), "{answer}");
    assert!(answer.contains("0 failed"), "{answer}");
    let (_, response_id) = h.command(JANE, "doctor --repair").await;
    let refused = wait_for_response(&h, &response_id).await;
    assert!(refused.contains("admin"), "{refused}");
    assert!(!refused.contains("Doctor (with repair)"), "{refused}");
    assert!(
        h.handle()
            .messages()
            .iter()
            .all(|m| m.ephemeral_to.is_some())
    );
}

async fn wait_for_response(h: &Harness, response_id: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(message) = h
            .handle()
            .messages()
            .into_iter()
            .find(|m| m.response_url.as_deref() == Some(response_id))
        {
            return m365bot::slack::blocks::to_text(&message.blocks, &message.text);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no answer on the response URL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_wrong_secret_is_answered_beside_the_field_and_nothing_is_written() {
    a_wrong_secret_is_answered_beside_the_field_and_nothing_is_written_on("http").await;
}

#[tokio::test]
async fn a_wrong_secret_is_answered_beside_the_field_and_nothing_is_written_over_socket_mode() {
    a_wrong_secret_is_answered_beside_the_field_and_nothing_is_written_on("socket").await;
}

async fn a_wrong_secret_is_answered_beside_the_field_and_nothing_is_written_on(transport: &str) {
    let h = Harness::start_on(transport).await;
    let (client_id, _secret) = h.world.sandbox.handle().create_app("Outbound by hand", &[]);
    to_tenant(&h, false).await;
    let view = h
        .submit(ADMIN, json!({"domain": "contoso.onmicrosoft.com"}))
        .await;
    expect_step(&view, "Outbound Entra app");
    let window = view["id"].as_str().expect("id").to_owned();
    // A validation error first (not a GUID): beside the field, nothing stored.
    let before = m365bot::setup::store::active(&h.bot.app.db)
        .await
        .expect("reads")
        .expect("active");
    h.submit(
        ADMIN,
        json!({"mode": "existing", "client_id": "nope", "client_secret": "typed-secret-1"}),
    )
    .await;
    let (answered, answer) = h.handle().submission_answers().pop().expect("answered");
    assert_eq!(answered, window);
    assert_eq!(answer["response_action"], "errors", "{answer}");
    assert!(answer["errors"]["client_id"].is_string(), "{answer}");
    let unchanged = m365bot::setup::store::active(&h.bot.app.db)
        .await
        .expect("reads")
        .expect("active");
    assert_eq!(unchanged.version, before.version, "nothing was written");
    // A wrong secret: refused live, the message beside the secret field.
    h.submit(
        ADMIN,
        json!({"mode": "existing", "client_id": client_id, "client_secret": "not-the-secret"}),
    )
    .await;
    let (_, answer) = h.handle().submission_answers().pop().expect("answered");
    assert_eq!(answer["response_action"], "errors", "{answer}");
    let error = answer["errors"]["client_secret"]
        .as_str()
        .expect("beside the secret");
    assert!(error.starts_with("The client secret is wrong"), "{error}");
    // Nothing created or stored: no app, no secret at rest, the step unchanged.
    assert_eq!(h.apps_named("outbound"), 0);
    let row = m365bot::setup::store::active(&h.bot.app.db)
        .await
        .expect("reads")
        .expect("active");
    assert!(row.sealed_secrets.is_none(), "no secret was stored");
    // The window is brought to the new version: the corrected secret goes through.
    let started = Instant::now();
    while !h.handle().current_view(ADMIN).is_some_and(|v| {
        v["private_metadata"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("\"version\":{}", row.version)))
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "window not updated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown = h.everything_shown();
    assert!(!shown.contains("not-the-secret"), "the secret was echoed");
    assert!(!shown.contains("typed-secret-1"), "the secret was echoed");
}

#[tokio::test]
async fn cancel_a_stale_window_and_a_non_admin() {
    cancel_a_stale_window_and_a_non_admin_on("http").await;
}

#[tokio::test]
async fn cancel_a_stale_window_and_a_non_admin_over_socket_mode() {
    cancel_a_stale_window_and_a_non_admin_on("socket").await;
}

async fn cancel_a_stale_window_and_a_non_admin_on(transport: &str) {
    let h = Harness::start_on(transport).await;
    // A non-admin: the window says which role is missing; no setup is started.
    let refused = h.open_setup(JANE).await;
    let text = m365bot::sandbox::slack::view_text(&refused);
    assert!(text.contains("admin"), "{text}");
    assert!(refused.get("submit").is_none(), "nothing to submit: {text}");
    assert!(
        m365bot::setup::store::active(&h.bot.app.db)
            .await
            .expect("reads")
            .is_none()
    );
    // Two windows on the same step: the second one is out of date once the first moved on.
    let first = h.open_setup(ADMIN).await;
    let second = h.open_setup(ADMIN).await;
    expect_step(&second, "What setup will do");
    let answer = submit_view(&h, first["id"].as_str().expect("id")).await;
    assert_eq!(answer["response_action"], "update");
    expect_step(&answer["view"], "Environment and authentication type");
    let version = m365bot::setup::store::active(&h.bot.app.db)
        .await
        .expect("reads")
        .expect("active")
        .version;
    let answer = submit_view(&h, second["id"].as_str().expect("id")).await;
    assert_eq!(answer["response_action"], "update");
    let stale = h.settled(ADMIN).await;
    assert_eq!(stale["id"], second["id"]);
    expect_step(&stale, "This window is out of date");
    assert!(
        stale.get("submit").is_none(),
        "an out-of-date window submits nothing"
    );
    assert_eq!(
        m365bot::setup::store::active(&h.bot.app.db)
            .await
            .expect("reads")
            .expect("active")
            .version,
        version,
        "a stale window writes nothing"
    );
    // From the out-of-date window to the current step, then cancel.
    let current = h.click(ADMIN, "setup.refresh").await;
    expect_step(&current, "Environment and authentication type");
    let cancelled = h.click(ADMIN, "setup.cancel").await;
    expect_step(&cancelled, "Setup cancelled");
    assert!(
        m365bot::setup::store::active(&h.bot.app.db)
            .await
            .expect("reads")
            .is_none(),
        "the setup is no longer active"
    );
    // Typing setup again starts a new one.
    let fresh = h.open_setup(ADMIN).await;
    expect_step(&fresh, "What setup will do");
}

/// Submits the window `id` as it is, as Slack does; the bot's answer (applied).
async fn submit_view(h: &Harness, id: &str) -> Value {
    let payload = h.handle().submission(id, &Map::new()).expect("payload");
    let answer = post_interaction(h, &payload).await;
    h.handle()
        .answer_submission(id, &answer)
        .expect("Slack accepts the answer");
    answer
}

/// Posts an interaction payload to the bot, signed; the JSON answer (`Null` when empty).
async fn post_interaction(h: &Harness, payload: &Value) -> Value {
    if h.socket {
        let envelope = h.handle().socket_interaction(payload.clone());
        return socket_ack(h, &envelope).await;
    }
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature = sign(SANDBOX_SIGNING_SECRET.as_bytes(), &ts, form.as_bytes());
    let response = reqwest::Client::new()
        .post(format!(
            "{}{}",
            h.bot.base_url,
            m365bot::slack::INTERACTIONS_PATH
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(TIMESTAMP_HEADER, ts)
        .header(SIGNATURE_HEADER, signature)
        .body(form)
        .send()
        .await
        .expect("the bot answers");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_emulator_refuses_a_used_or_expired_trigger_and_a_stale_hash() {
    let h = Harness::start().await;
    let api = &h.bot.app.slack.as_ref().expect("slack").api;
    let view = m365bot::slack::modal::checking("the emulator");
    let ticket = h.handle().new_command("C0GENERAL", ADMIN);
    let shown = api
        .views_open(&ticket.trigger_id, &view)
        .await
        .expect("opens");
    let again = api
        .views_open(&ticket.trigger_id, &view)
        .await
        .expect_err("used");
    assert_eq!(again.code(), Some("exchanged_trigger_id"));
    let stale = api
        .views_update(&shown.id, &view, Some("0.stale"))
        .await
        .expect_err("stale hash");
    assert_eq!(stale.code(), Some("hash_conflict"));
    let updated = api
        .views_update(&shown.id, &view, shown.hash.as_deref())
        .await
        .expect("current hash");
    assert_ne!(updated.hash, shown.hash);
    let late = h.handle().new_command("C0GENERAL", ADMIN);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let expired = api
        .views_open(&late.trigger_id, &view)
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Some("expired_trigger_id"));
    // views.push stacks a view on the open one (a fresh trigger, e.g. an action's).
    let push = h.handle().new_command("C0GENERAL", ADMIN);
    let pushed = api
        .views_push(&push.trigger_id, &view)
        .await
        .expect("pushed");
    assert_ne!(pushed.id, shown.id);
    let on_top = h.handle().current_view(ADMIN).expect("open");
    assert_eq!(on_top["id"].as_str(), Some(pushed.id.as_str()));
    assert_eq!(on_top["previous_view_id"].as_str(), Some(shown.id.as_str()));
    // A view over Slack's limits is refused like Slack does.
    let mut long = view.clone();
    long["title"]["text"] = json!("A title that is longer than 24");
    let invalid = api
        .views_update(&pushed.id, &long, None)
        .await
        .expect_err("too long");
    assert_eq!(invalid.code(), Some("invalid_arguments"));
    let payload = h
        .handle()
        .action(&shown.id, "missing", &Map::new())
        .expect_err("no such button");
    assert!(payload.contains("no button"), "{payload}");
}

/// Waits for the Socket Mode ack of `envelope_id`; its response payload (`Null`: none).
async fn socket_ack(h: &Harness, envelope_id: &str) -> Value {
    let started = Instant::now();
    loop {
        if let Some(ack) = h
            .handle()
            .socket_acks()
            .into_iter()
            .find(|a| a.envelope_id == envelope_id)
        {
            return ack.payload.unwrap_or(Value::Null);
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no ack within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn over_socket_mode_the_window_opens_submits_and_shows_errors_beside_the_field() {
    let h = Harness::start_on("socket").await;
    let (envelope, _) = h.handle().socket_command(ADMIN, "C0GENERAL", "setup");
    let ack = socket_ack(&h, &envelope).await;
    assert!(ack.to_string().contains("window"), "{ack}");
    let consent = h.settled(ADMIN).await;
    expect_step(&consent, "What setup will do");
    let id = consent["id"].as_str().expect("id").to_owned();
    let answer_of = async |values: Value| {
        let values = values.as_object().cloned().unwrap_or_default();
        let payload = h.handle().submission(&id, &values).expect("payload");
        let envelope = h.handle().socket_interaction(payload);
        let answer = socket_ack(&h, &envelope).await;
        h.handle()
            .answer_submission(&id, &answer)
            .expect("Slack accepts the answer");
        answer
    };
    let answer = answer_of(json!({})).await;
    expect_step(&answer["view"], "Environment and authentication type");
    let answer = answer_of(json!({"auth": "aad"})).await;
    expect_step(&answer["view"], "Microsoft 365 tenant");
    let answer = answer_of(json!({"domain": "not a domain"})).await;
    assert_eq!(answer["response_action"], "errors", "{answer}");
    assert!(answer["errors"]["domain"].is_string(), "{answer}");
    let answer = answer_of(json!({"domain": "contoso.onmicrosoft.com"})).await;
    expect_step(&answer["view"], "Outbound Entra app");
    // Every envelope was acknowledged once.
    assert_eq!(h.handle().socket_unacknowledged(), 0);
}

#[tokio::test]
async fn a_slow_step_is_answered_with_working_and_its_result_follows_by_views_update() {
    let h = Harness::start().await;
    to_tenant(&h, false).await;
    // Entra answers slowly: the tenant check takes longer than Slack waits for an answer.
    h.world.sandbox.handle().set_faults(
        m365bot::sandbox::Emulator::Entra,
        m365bot::sandbox::FaultConfig::none().with_latency_ms(2600),
    );
    let updates = |h: &Harness| {
        h.handle()
            .request_log()
            .iter()
            .filter(|call| call.method == "views.update" && call.error.is_none())
            .count()
    };
    let before = updates(&h);
    let view = h
        .submit(ADMIN, json!({"domain": "contoso.onmicrosoft.com"}))
        .await;
    expect_step(&view, "Outbound Entra app");
    let (_, answer) = h.handle().submission_answers().pop().expect("answered");
    assert_eq!(answer["response_action"], "update");
    expect_step(&answer["view"], "Working on it");
    assert_eq!(updates(&h), before + 1, "the result came by views.update");
}
