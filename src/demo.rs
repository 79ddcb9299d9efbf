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
}

impl FromStr for Misconfiguration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "wrong-secret" => Ok(Self::WrongSecret),
            "missing-role" => Ok(Self::MissingRole),
            "cross-scope" => Ok(Self::CrossScope),
            "v2-tokens" => Ok(Self::V2Tokens),
            other => Err(format!(
                "unknown misconfiguration {other:?}; use wrong-secret, missing-role, cross-scope or v2-tokens"
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
}

impl Demo {
    /// Starts the emulators and provisions a complete AAD-auth integration in them.
    pub async fn start(
        options: SandboxOptions,
        bot_listen: SocketAddr,
        database_url: &str,
    ) -> anyhow::Result<Self> {
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
"#,
            tenant_id = demo.tenant_id,
            servicenow = urls.servicenow,
            sn_user = demo.servicenow_admin_user,
            sn_password = demo.servicenow_admin_password,
            entra = urls.entra,
            graph = urls.graph_v1(),
            graph_client_id = demo.graph_client_id,
            graph_client_secret = demo.graph_client_secret,
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
        let (mut spec, provision_log) = provision_aad(&upstreams, &request)
            .await
            .context("provisioning the demo integration")?;
        spec.tenant_id = Some(demo.tenant_id.clone());
        settings.integration = Some(spec.clone());
        // The demo gives the admin the app's administrator role, as a finished setup would.
        let handle = sandbox.handle();
        handle.sn_grant_role(
            &demo.servicenow_admin_user,
            &format!("{}.{}", settings.servicenow.app_scope, roles::ADMINISTRATOR),
        );
        Ok(Self {
            sandbox,
            settings,
            spec,
            provision_log,
        })
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
        let outbound = &self.spec.outbound_app.client_id;
        format!(
            "m365bot sandbox is running (local no-auth mode; everything on this machine only).\n\
             \n\
             Bot endpoint       http://{listen}/api/messages\n\
             ServiceNow emulator {sn}  (admin / {sn_pw})\n\
             Entra ID emulator   {entra}  (tenant {domain}, {tenant})\n\
             Graph emulator      {graph}\n\
             Demo integration    outbound app {outbound}; {steps} provisioning steps\n\
             \n\
             Talk to the bot with the Microsoft 365 Agents Playground (Node.js 20):\n\
             \x20 npm ci --prefix tools/node\n\
             \x20 M365_AGENTS_PLAYGROUND_CONFIG_PATH=sandbox/m365agentsplayground.yml \\\n\
             \x20 BOT_ENDPOINT=http://{listen}/api/messages TEAMSAPPTESTER_BROWSER=none \\\n\
             \x20   node tools/node/node_modules/@microsoft/m365agentsplayground/cli.js --port 56150\n\
             \x20 then open http://localhost:56150 and type: help\n\
             \n\
             Verify the demo integration:   m365bot sandbox --doctor\n\
             See doctor find a problem:     m365bot sandbox --doctor --break wrong-secret\n\
             \x20 (also missing-role, cross-scope, v2-tokens)\n\
             Stop with Ctrl-C.",
            sn = urls.servicenow,
            sn_pw = demo.servicenow_admin_password,
            entra = urls.entra,
            domain = demo.tenant_domain,
            tenant = demo.tenant_id,
            graph = urls.graph_v1(),
            steps = self.provision_log.len(),
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
