//! Test helpers of the link feature: a bot wired to the sandbox emulators (ServiceNow, Entra ID,
//! Graph) and a fake Bot Connector, with a registered sign-in app; chat events; a browser that
//! walks the sign-in redirects without following them.

use std::time::Duration;

use m365bot::core::{
    self, Actor, ConversationAddress, EventKind, InboundEvent, Mention, Platform, Reply,
};
use m365bot::link::store::{AccountLink, LinkStore};
use m365bot::sandbox::{Sandbox, SandboxOptions, SignedInUser};
use serde_json::Value;

use super::TestApp;
use super::connector::{FakeConnector, RecordedRequest, connector_settings_toml};

/// The ServiceNow column the tests write links to (the `[link]` default).
pub const LINK_FIELD: &str = "u_m365_admin_account";

/// A chat user of the tests: Teams id, display name, e-mail/UPN and Entra object id (the
/// Agents Playground users of `sandbox/m365agentsplayground.yml`).
#[derive(Debug, Clone, Copy)]
pub struct ChatPerson {
    /// `29:…`.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// E-mail and UPN.
    pub upn: &'static str,
    /// `aadObjectId`.
    pub oid: &'static str,
}

/// `admin`: ServiceNow admin and app administrator; Global Administrator in Entra ID.
pub const ADMIN: ChatPerson = ChatPerson {
    id: "29:1sandboxAdmin",
    name: "System Administrator",
    upn: "admin@contoso.onmicrosoft.com",
    oid: "7c1e0f4a-0000-4000-8000-000000000001",
};
/// `jane.doe`: insights user only.
pub const JANE: ChatPerson = ChatPerson {
    id: "29:1janeDoe",
    name: "Jane Doe",
    upn: "jane.doe@contoso.onmicrosoft.com",
    oid: "7c1e0f4a-0000-4000-8000-000000000002",
};
/// `fred.luddy`: itil, no app role.
pub const FRED: ChatPerson = ChatPerson {
    id: "29:1fredLuddy",
    name: "Fred Luddy",
    upn: "fred.luddy@contoso.onmicrosoft.com",
    oid: "7c1e0f4a-0000-4000-8000-000000000003",
};
/// `beth.anglin`: app administrator, no Entra admin role.
pub const BETH: ChatPerson = ChatPerson {
    id: "29:1bethAnglin",
    name: "Beth Anglin",
    upn: "beth.anglin@contoso.onmicrosoft.com",
    oid: "7c1e0f4a-0000-4000-8000-000000000004",
};

/// The signed-in user of the Entra emulator for `person` (in the demo tenant).
pub fn signed_in(person: ChatPerson) -> SignedInUser {
    SignedInUser {
        oid: person.oid.to_owned(),
        upn: person.upn.to_owned(),
        name: person.name.to_owned(),
        tenant_id: None,
    }
}

/// A sandbox, a fake connector and a bot wired to both.
pub struct LinkHarness {
    /// The emulators.
    pub sandbox: Sandbox,
    /// The fake Bot Connector (member look-ups, proactive messages).
    pub connector: FakeConnector,
    /// The bot.
    pub app: TestApp,
    /// Client id of the sign-in app registered in the Entra emulator.
    pub sign_in_client_id: String,
    /// A browser: no redirects followed, no cookies.
    pub browser: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl LinkHarness {
    /// Starts everything; `add_column` adds the link column to `sys_user` in the emulator;
    /// `extra_link_toml` is appended to the `[link]` section.
    pub async fn start_with(add_column: bool, extra_link_toml: &str) -> Self {
        let sandbox = Sandbox::start(SandboxOptions::default())
            .await
            .expect("sandbox starts");
        let handle = sandbox.handle();
        if add_column {
            handle
                .sn_add_column("sys_user", LINK_FIELD, "string")
                .expect("column added");
        }
        // As in `m365bot sandbox`: the admin holds the app's administrator role.
        assert!(handle.sn_grant_role("admin", "x_mioms_m365_assis.administrator"));
        let connector = FakeConnector::start().await;
        for person in [ADMIN, JANE, FRED, BETH] {
            connector.add_member(person.id, person.name, person.upn, person.oid);
        }
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let (client_id, secret) = handle.create_app(
            "m365bot account linking",
            &[&format!("{base}/auth/link/callback")],
        );
        let demo = sandbox.demo().clone();
        let urls = sandbox.urls().clone();
        let toml = format!(
            "{connector}\n[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}/\"\n\
             [servicenow]\ninstance_url = \"{sn}\"\nusername = \"{sn_user}\"\npassword = \"{sn_pw}\"\n\
             [entra]\nauthority_url = \"{entra}/\"\ngraph_url = \"{graph}/\"\ngraph_client_id = \"{gid}\"\ngraph_client_secret = \"{gsecret}\"\n\
             [link]\nclient_id = \"{client_id}\"\nclient_secret = \"{secret}\"\ntenant = \"{tenant}\"\n{extra_link_toml}\n",
            connector = connector_settings_toml(&connector),
            sn = urls.servicenow,
            sn_user = demo.servicenow_admin_user,
            sn_pw = demo.servicenow_admin_password,
            entra = urls.entra,
            graph = urls.graph_v1(),
            gid = demo.graph_client_id,
            gsecret = demo.graph_client_secret,
            tenant = demo.tenant_id,
        );
        // The bot serves the sandbox tenant (its Graph client gets tokens there).
        let toml = super::merge_toml(
            &toml,
            &format!("[bot]\ntenant_id = \"{}\"\n", demo.tenant_id),
        );
        let app = TestApp::spawn(&toml).await;
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("browser");
        Self {
            sandbox,
            connector,
            app,
            sign_in_client_id: client_id,
            browser,
        }
    }

    /// Starts everything with the link column present and default `[link]` settings.
    pub async fn start() -> Self {
        Self::start_with(true, "").await
    }

    /// A typed message from `person` in their 1:1 chat.
    pub fn message(&self, person: ChatPerson, text: &str) -> InboundEvent {
        self.event(person, EventKind::Message(text.to_owned()), Vec::new())
    }

    /// An event from `person` with `mentions`.
    pub fn event(
        &self,
        person: ChatPerson,
        kind: EventKind,
        mentions: Vec<Mention>,
    ) -> InboundEvent {
        let conversation = format!("a:personal-{}", person.id);
        InboundEvent {
            actor: Actor {
                user_id: person.id.to_owned(),
                aad_object_id: Some(person.oid.to_owned()),
                name: Some(person.name.to_owned()),
            },
            platform: Platform::Teams,
            conversation_id: conversation.clone(),
            conversation_type: "personal".to_owned(),
            address: ConversationAddress {
                service_url: self.connector.service_url(),
                tenant_id: super::TEST_TENANT_ID.to_owned(),
                bot_id: "28:bot".to_owned(),
                bot_name: Some("m365bot".to_owned()),
                thread_conversation_id: conversation,
                ..ConversationAddress::default()
            },
            mentions,
            kind,
        }
    }

    /// Sends a command as `person` and returns the first reply.
    pub async fn command(&self, person: ChatPerson, text: &str) -> Reply {
        let replies = m365bot::chat::handle(&self.app.app, self.message(person, text)).await;
        replies.into_iter().next().expect("one reply")
    }

    /// `link-account` as `person`; the sign-in URL of the card.
    pub async fn sign_in_url(&self, person: ChatPerson) -> String {
        let reply = self.command(person, "link-account").await;
        sign_in_url_of(&reply).unwrap_or_else(|| panic!("no sign-in link in {reply:?}"))
    }

    /// GET `url` without following redirects.
    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.browser.get(url).send().await.expect("request")
    }

    /// Walks start → Entra authorize → callback; returns (every Location seen, final status,
    /// final page).
    pub async fn walk(&self, start_url: &str) -> (Vec<String>, u16, String) {
        let mut locations = Vec::new();
        let mut url = start_url.to_owned();
        for _ in 0..5 {
            let response = self.get(&url).await;
            let status = response.status().as_u16();
            if status == 302 {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .expect("a Location")
                    .to_owned();
                locations.push(location.clone());
                url = location;
                continue;
            }
            let body = response.text().await.expect("page");
            return (locations, status, body);
        }
        panic!("too many redirects: {locations:?}");
    }

    /// The stored link of `person`.
    pub async fn stored_link(&self, person: ChatPerson) -> Option<AccountLink> {
        LinkStore::new(&self.app.app.db)
            .link("teams", person.id)
            .await
            .expect("link readable")
    }

    /// The link column of the ServiceNow user `user_name`.
    pub fn servicenow_link(&self, user_name: &str) -> Option<String> {
        let rows = self
            .sandbox
            .handle()
            .sn_query("sys_user", &format!("user_name={user_name}"))
            .expect("sys_user");
        rows.first()
            .and_then(|row| row.get(LINK_FIELD))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// Waits for the `count`-th proactive message and returns the card text of the last one.
    pub async fn chat_card(&self, count: usize) -> (RecordedRequest, String) {
        let requests = self
            .connector
            .wait_for_requests(count, Duration::from_secs(10))
            .await;
        let last = requests.last().expect("a request").clone();
        let text = last.body["attachments"][0]["content"].to_string();
        (last, text)
    }
}

/// The sign-in URL in a sign-in card (its own template or the notice fallback).
pub fn sign_in_url_of(reply: &Reply) -> Option<String> {
    let Reply::Card { data, .. } = reply;
    if let Some(url) = data["url"].as_str() {
        return Some(url.to_owned());
    }
    let text = data["text"].as_str()?;
    let start = text.find("](")? + 2;
    let end = text[start..].find(')')? + start;
    Some(text[start..end].to_owned())
}

/// Title, text and next step of a reply, for assertions.
pub fn card_text(reply: &Reply) -> String {
    let Reply::Card { data, .. } = reply;
    data.to_string()
}

/// The value of query parameter `name` of `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
