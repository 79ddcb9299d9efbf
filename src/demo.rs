//! `m365bot sandbox`: the emulators, a complete integration provisioned in them the way setup
//! does it, and bot settings pointing at them (local no-auth mode for the Agents Playground).

use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::integration::provision::{ProvisionRequest, provision_aad};
use crate::integration::{IntegrationSpec, Upstreams, roles};
use crate::sandbox::{Sandbox, SandboxOptions};

/// A misconfiguration the sandbox can inject, so `doctor` has something to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misconfiguration {
    /// The outbound app's secret was rotated in Entra ID; the recorded one is stale.
    WrongSecret,
    /// The integration user lost `incident_manager`.
    MissingRole,
    /// `oauth_entity` is not readable from the app's scope.
    CrossScope,
    /// The inbound app issues v2 access tokens.
    V2Tokens,
    /// The bot's Graph app lost its application permissions: Graph answers 403 to everything.
    Graph403,
}

impl FromStr for Misconfiguration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "wrong-secret" => Ok(Self::WrongSecret),
            "missing-role" => Ok(Self::MissingRole),
            "cross-scope" => Ok(Self::CrossScope),
            "v2-tokens" => Ok(Self::V2Tokens),
            "graph-403" => Ok(Self::Graph403),
            other => Err(format!(
                "unknown misconfiguration {other:?}; use wrong-secret, missing-role, cross-scope, v2-tokens or graph-403"
            )),
        }
    }
}

/// The running emulators, the provisioned integration and the bot settings for them.
pub struct Demo {
    /// The emulators.
    pub sandbox: Sandbox,
    /// Settings of a bot wired to the emulators.
    pub settings: Settings,
    /// The integration provisioned in the emulators.
    pub spec: IntegrationSpec,
    /// What provisioning created.
    pub provision_log: Vec<String>,
    /// False with `--fresh`: nothing was provisioned.
    pub provisioned: bool,
}

impl Demo {
    /// Starts the emulators and provisions a complete AAD-auth integration in them.
    pub async fn start(
        options: SandboxOptions,
        bot_listen: SocketAddr,
        database_url: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(options, bot_listen, database_url, false).await
    }

    /// Like [`Self::start`]; with `fresh` nothing is provisioned, so the setup wizard starts
    /// from an empty tenant and instance (`spec` then only names the tenant and instance, and
    /// `provisioned` is false).
    pub async fn start_with(
        options: SandboxOptions,
        bot_listen: SocketAddr,
        database_url: &str,
        fresh: bool,
    ) -> anyhow::Result<Self> {
        let setup_key = crate::setup::crypto::sandbox_key(database_url)?;
        let sandbox = Sandbox::start(options.clone()).await?;
        let urls = sandbox.urls().clone();
        let demo = sandbox.demo().clone();
        let toml = format!(
            r#"
[server]
listen = "{bot_listen}"
public_url = "http://{bot_listen}/"
[database]
url = "{database_url}"
[bot]
auth_mode = "insecure-local"
tenant_id = "{tenant_id}"
allowed_service_url_hosts = ["localhost", "127.0.0.1"]
[servicenow]
instance_url = "{servicenow}"
username = "{sn_user}"
password = "{sn_password}"
[entra]
authority_url = "{entra}/"
graph_url = "{graph}/"
graph_client_id = "{graph_client_id}"
graph_client_secret = "{graph_client_secret}"
[setup]
encryption_key = "{setup_key}"
[notifications.sources.servicenow]
poll = true
interval_secs = 3
case_reference_field = "{case_field}"
[notifications.sources.push]
hmac_secret = "{push_secret}"
[notifications.sources.service_health]
poll = true
interval_secs = 10
mirror = true
"#,
            tenant_id = demo.tenant_id,
            servicenow = urls.servicenow,
            sn_user = demo.servicenow_admin_user,
            sn_password = demo.servicenow_admin_password,
            entra = urls.entra,
            graph = urls.graph_v1(),
            graph_client_id = demo.graph_client_id,
            graph_client_secret = demo.graph_client_secret,
            case_field = options.case_reference_field,
            push_secret = crate::upstream::entra::random_token(32),
        );
        let mut settings = Settings::from_toml_str(&toml).context("sandbox settings")?;
        let upstreams = Upstreams::from_settings(
            &settings,
            crate::app::http_client(&settings)?,
            std::sync::Arc::default(),
        );
        let request = ProvisionRequest {
            tenant: demo.tenant_domain.clone(),
            organization_name: Some(options.organization_name.clone()),
            instance_url: url::Url::parse(&urls.servicenow).context("emulator URL")?,
            app_name_prefix: "Microsoft 365 support".to_owned(),
        };
        let (mut spec, provision_log) = if fresh {
            (
                crate::setup::effects::placeholder_spec(&request),
                Vec::new(),
            )
        } else {
            provision_aad(&upstreams, &request)
                .await
                .context("provisioning the demo integration")?
        };
        spec.tenant_id = Some(demo.tenant_id.clone());
        if !fresh {
            settings.integration = Some(spec.clone());
        }
        // The demo gives the admin the app's administrator role, as a finished setup would.
        let handle = sandbox.handle();
        handle.sn_grant_role(
            &demo.servicenow_admin_user,
            &format!("{}.{}", settings.servicenow.app_scope, roles::ADMINISTRATOR),
        );
        wire_account_linking(&handle, &mut settings);
        let demo = Self {
            sandbox,
            settings,
            spec,
            provision_log,
            provisioned: !fresh,
        };
        if bot_listen.port() != 0 {
            demo.connect_push(bot_listen);
            demo.start_health_ticker(std::time::Duration::from_secs(45));
        }
        Ok(demo)
    }

    /// Makes the ServiceNow emulator push signed case changes to the bot at `bot_addr`, as the
    /// Business Rule of `m365bot servicenow-script` would.
    pub fn connect_push(&self, bot_addr: SocketAddr) {
        let sources = &self.settings.notifications.sources;
        let Some(secret) = &sources.push.hmac_secret else {
            return;
        };
        self.sandbox
            .handle()
            .sn_set_push_target(Some(crate::sandbox::servicenow::PushTarget {
                url: format!("http://{bot_addr}{}", crate::notify::sources::push::PATH),
                secret: secret.expose_secret().to_owned(),
                table: sources.servicenow.table.clone(),
                filter: sources.servicenow.filter(),
                fields: sources.servicenow.fields(),
            }));
    }

    /// Moves the demo Teams service-health issue along every `every` (two updates, then
    /// resolution), so a subscribed channel sees its thread grow.
    pub fn start_health_ticker(&self, every: std::time::Duration) {
        let handle = self.sandbox.handle();
        let steps = [
            (
                "RestoringService",
                "Current status: We've identified a recent configuration change as the cause and are reverting it.",
                false,
            ),
            (
                "VerifyingService",
                "Current status: The change was reverted; we're monitoring meeting joins to confirm recovery.",
                false,
            ),
            (
                "ServiceRestored",
                "Final status: Meeting joins from the desktop client have recovered.",
                true,
            ),
        ];
        tokio::spawn(async move {
            for (status, post, resolve) in steps {
                tokio::time::sleep(every).await;
                handle.advance_issue(
                    "TM498765",
                    crate::sandbox::IssueAdvance {
                        post: Some(post.to_owned()),
                        status: Some(status.to_owned()),
                        resolve,
                    },
                );
            }
        });
    }

    /// The `curl` that changes a demo case through the ServiceNow emulator's Table API.
    pub fn case_change_command(&self) -> Option<String> {
        let sources = &self.settings.notifications.sources.servicenow;
        let query = format!("{}^active=true^ORDERBYnumber", sources.filter());
        let case = self
            .sandbox
            .handle()
            .sn_query(&sources.table, &query)?
            .into_iter()
            .next()?;
        let sys_id = case.get("sys_id")?.as_str()?.to_owned();
        let demo = self.sandbox.demo();
        Some(format!(
            "curl -u {user}:{password} -X PATCH -H 'Content-Type: application/json' -H 'Accept: application/json' \\\n\x20   {sn}/api/now/table/{table}/{sys_id} \\\n\x20   -d '{{\"state\":\"3\",\"comments\":\"Waiting for Microsoft support\"}}'",
            user = demo.servicenow_admin_user,
            password = demo.servicenow_admin_password,
            sn = self.sandbox.urls().servicenow,
            table = sources.table,
        ))
    }

    /// Injects a misconfiguration into the emulators.
    pub fn break_it(&self, misconfiguration: Misconfiguration) {
        let handle = self.sandbox.handle();
        match misconfiguration {
            Misconfiguration::WrongSecret => {
                handle.rotate_secret(&self.spec.outbound_app.client_id);
            }
            Misconfiguration::MissingRole => {
                if let Some(user) = self.spec.integration_user_name() {
                    handle.sn_remove_role(&user, roles::INCIDENT_MANAGER);
                }
            }
            Misconfiguration::CrossScope => handle.sn_set_oauth_entity_cross_scope_readable(false),
            Misconfiguration::Graph403 => {
                handle.revoke_graph_permissions(&self.sandbox.demo().graph_client_id);
            }
            Misconfiguration::V2Tokens => {
                if let Some(inbound) = &self.spec.inbound_app {
                    handle.set_requested_access_token_version(&inbound.client_id, Some(2));
                }
            }
        }
    }

    /// What a new user reads when the sandbox starts.
    pub fn welcome(&self) -> String {
        let listen = self.settings.server.listen;
        let urls = self.sandbox.urls();
        let demo = self.sandbox.demo();
        let outbound = if self.provisioned {
            format!(
                "outbound app {}; {} provisioning steps",
                self.spec.outbound_app.client_id,
                self.provision_log.len()
            )
        } else {
            "none (--fresh): type `setup` in a 1:1 chat to build it".to_owned()
        };
        format!(
            "m365bot sandbox is running (local no-auth mode; everything on this machine only).\n\
             \n\
             Bot endpoint       http://{listen}/api/messages\n\
             ServiceNow emulator {sn}  (admin / {sn_pw})\n\
             Entra ID emulator   {entra}  (tenant {domain}, {tenant})\n\
             Graph emulator      {graph}\n\
             Demo integration    {outbound}\n\
             \n\
             Talk to the bot with the Microsoft 365 Agents Playground (Node.js 20):\n\
             \x20 npm ci --prefix tools/node\n\
             \x20 M365_AGENTS_PLAYGROUND_CONFIG_PATH=sandbox/m365agentsplayground.yml \\\n\
             \x20 BOT_ENDPOINT=http://{listen}/api/messages TEAMSAPPTESTER_BROWSER=none \\\n\
             \x20   node tools/node/node_modules/@microsoft/m365agentsplayground/cli.js --port 56150\n\
             \x20 then open http://localhost:56150 and type: help\n\
             \n\
             Case notifications: in a channel of the Playground type `subscribe`, then change a\n\
             \x20 demo case (the emulator pushes it to the bot; the poller would catch it too):\n\
             \x20 {case_change}\n\
             \x20 Microsoft 365 service health (Graph emulator) is polled every 10 s and mirrored\n\
             \x20 into ServiceNow incidents; the Teams issue TM498765 gets an update every 45 s.\n\
             \n\
             Link your Microsoft 365 account: type `link-account` (the emulated sign-in is admin@{domain}).\n\
             \n\
             Set up the integration in chat: type `setup` (tenant {domain}; start with --fresh for\n\
             \x20 an empty tenant and instance, else the wizard reuses the demo's apps and records).\n\
             \n\
             Verify the demo integration:   m365bot sandbox --doctor\n\
             See doctor find a problem:     m365bot sandbox --doctor --break wrong-secret\n\
             \x20 (also missing-role, cross-scope, v2-tokens, graph-403)\n\
             Another ServiceNow release:    m365bot sandbox --doctor --other-release\n\
             Stop with Ctrl-C.",
            sn = urls.servicenow,
            sn_pw = demo.servicenow_admin_password,
            entra = urls.entra,
            domain = demo.tenant_domain,
            tenant = demo.tenant_id,
            graph = urls.graph_v1(),
            case_change = self
                .case_change_command()
                .unwrap_or_else(|| "(no open demo case found)".to_owned()),
        )
    }

    /// The integration's secrets, for tests that scan output for leaks.
    pub fn secrets(&self) -> Vec<String> {
        [
            Some(&self.spec.outbound_app),
            self.spec.inbound_app.as_ref(),
            self.spec.rest_user_app.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|app| app.client_secret.expose_secret().to_owned())
        .collect()
    }
}

/// Wires account linking into the `m365bot sandbox` emulators: registers a sign-in app whose
/// redirect URI is the bot's callback (from `settings.server.public_url`), uses it in
/// `settings.link`, and adds the link column to the emulated `sys_user` table.
fn wire_account_linking(
    handle: &crate::sandbox::SandboxHandle,
    settings: &mut crate::config::Settings,
) {
    let callback = format!(
        "{}{}",
        settings.server.public_url.as_str().trim_end_matches('/'),
        crate::link::flow::CALLBACK_PATH
    );
    let (client_id, secret) = handle.create_app("m365bot account linking", &[&callback]);
    settings.link.client_id = Some(client_id);
    settings.link.client_secret = Some(secrecy::SecretString::from(secret));
    if settings.link.servicenow_table == "sys_user"
        && let Err(err) =
            handle.sn_add_column("sys_user", &settings.link.servicenow_field, "string")
    {
        tracing::warn!(error = %err, "sandbox: link column not added");
    }
}
