//! The Microsoft 365 support integration itself: what it consists of (`IntegrationSpec`), the
//! values the guide prescribes, provisioning through Graph and the Table API, and `doctor`.

pub mod doctor;
pub mod provision;
pub mod rotate;
pub mod runtime;
pub mod schema;
pub mod watch;

use std::sync::Arc;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::upstream::entra::EntraClient;
use crate::upstream::graph::{ClientCredentials, GraphClient};
use crate::upstream::servicenow::{ServiceNowAuth, ServiceNowClient};

/// How Microsoft authenticates to ServiceNow (inbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// Entra ID tokens validated by a ServiceNow OIDC provider (three apps).
    Aad,
    /// A ServiceNow integration user with a password.
    Basic,
}

/// An Entra app registration's client id and secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCredentials {
    /// Application (client) id.
    pub client_id: String,
    /// Client secret value.
    #[serde(skip_serializing)]
    pub client_secret: SecretString,
}

/// Everything that makes up one integration: what `doctor` checks and the admin center needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSpec {
    /// Microsoft 365 tenant: a domain (`contoso.onmicrosoft.com`) or its id.
    pub tenant: String,
    /// Tenant id, when known; checked against the tenant's metadata.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Display name of the organisation, used in the OIDC provider name (`{name} Azure`).
    #[serde(default)]
    pub organization_name: Option<String>,
    /// Base URL of the ServiceNow instance the integration lives on.
    pub instance_url: Url,
    /// Inbound authentication type.
    #[serde(default = "default_auth_type")]
    pub auth_type: AuthType,
    /// The outbound Entra app (ServiceNow → Microsoft).
    pub outbound_app: AppCredentials,
    /// The inbound REST API Entra app (AAD auth only).
    #[serde(default)]
    pub inbound_app: Option<AppCredentials>,
    /// The REST-user Entra app (AAD auth only).
    #[serde(default)]
    pub rest_user_app: Option<AppCredentials>,
    /// Integration user name (Basic auth; with AAD auth it is the REST-user app's client id).
    #[serde(default)]
    pub integration_user: Option<String>,
    /// Integration user password (Basic auth only).
    #[serde(default, skip_serializing)]
    pub integration_user_password: Option<SecretString>,
}

fn default_auth_type() -> AuthType {
    AuthType::Aad
}

/// Roles of the Microsoft 365 support app and the platform.
pub mod roles {
    /// The integration user's role.
    pub const INCIDENT_MANAGER: &str = "incident_manager";
    /// Suffix of the app's insights role.
    pub const INSIGHTS_USER: &str = "insights_user";
    /// Suffix of the app's administrator role.
    pub const ADMINISTRATOR: &str = "administrator";
}

impl IntegrationSpec {
    /// The ServiceNow OAuth redirect URL, registered on the outbound app and the provider.
    pub fn redirect_url(&self) -> String {
        format!(
            "{}/oauth_redirect.do",
            self.instance_url.as_str().trim_end_matches('/')
        )
    }

    /// The v1 token URL the outbound OAuth provider must use.
    pub fn token_url(&self, authority: &Url) -> String {
        format!(
            "{}/{}/oauth2/token",
            authority.as_str().trim_end_matches('/'),
            self.tenant
        )
    }

    /// The v1 OpenID metadata URL the OIDC provider configuration must use.
    pub fn metadata_url(&self, authority: &Url) -> String {
        format!(
            "{}/{}/.well-known/openid-configuration",
            authority.as_str().trim_end_matches('/'),
            self.tenant
        )
    }

    /// The OIDC provider name the guide prescribes: `{Tenant} Azure`.
    pub fn oidc_provider_name(&self) -> String {
        let name = self.organization_name.clone().unwrap_or_else(|| {
            self.tenant
                .split('.')
                .next()
                .unwrap_or(&self.tenant)
                .to_owned()
        });
        let mut chars = name.chars();
        let capitalised = match chars.next() {
            Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
            None => String::new(),
        };
        format!("{capitalised} Azure")
    }

    /// The name setup gives the outbound OAuth provider (`oauth_entity`).
    pub fn outbound_provider_name(&self) -> String {
        format!("{} Microsoft 365 outbound", self.tenant)
    }

    /// The OIDC entity name the guide prescribes: `{tenant}_application_inbound_api`.
    pub fn oidc_entity_name(&self) -> String {
        format!("{}_application_inbound_api", self.tenant)
    }

    /// The integration user's User ID.
    pub fn integration_user_name(&self) -> Option<String> {
        match self.auth_type {
            AuthType::Aad => self.rest_user_app.as_ref().map(|app| app.client_id.clone()),
            AuthType::Basic => self.integration_user.clone(),
        }
    }
}

/// The upstream clients built from the settings.
pub struct Upstreams {
    /// Entra ID.
    pub entra: EntraClient,
    /// Microsoft Graph, when credentials are configured.
    pub graph: Option<GraphClient>,
    /// ServiceNow with the bot's own account, when configured.
    pub servicenow: Option<ServiceNowClient>,
    /// Entra authority base URL.
    pub authority: Url,
    /// Scope of the Microsoft 365 support app.
    pub app_scope: String,
    /// The shared HTTP client (timeouts, extra CA), for clients made per check.
    pub http: reqwest::Client,
}

impl Upstreams {
    /// Builds the clients; Graph and ServiceNow are `None` when not configured.
    pub fn from_settings(
        settings: &Settings,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        let http_for_checks = http.clone();
        let entra = EntraClient::new(http.clone(), settings.entra.authority_url.clone())
            .with_metrics(metrics.clone());
        let graph_client_id = settings
            .entra
            .graph_client_id
            .clone()
            .or_else(|| Some(settings.bot.app_id.clone()).filter(|id| !id.is_empty()));
        let graph_secret = settings
            .entra
            .graph_client_secret
            .clone()
            .or_else(|| settings.bot.app_password.clone());
        let graph_tenant = settings.integration.as_ref().map_or_else(
            || settings.bot.tenant_id.clone(),
            |spec| spec.tenant.clone(),
        );
        let graph = match (graph_client_id, graph_secret) {
            (Some(client_id), Some(secret)) => {
                let tokens =
                    ClientCredentials::new(entra.clone(), &graph_tenant, &client_id, secret);
                Some(
                    GraphClient::new(
                        http.clone(),
                        settings.entra.graph_url.clone(),
                        Arc::new(tokens),
                    )
                    .with_metrics(metrics.clone()),
                )
            }
            _ => None,
        };
        let sn = &settings.servicenow;
        let auth = match (&sn.username, &sn.password, &sn.client_id, &sn.client_secret) {
            (_, _, Some(client_id), Some(client_secret)) => {
                Some(ServiceNowAuth::OAuthClientCredentials {
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                })
            }
            (Some(user), Some(password), _, _) => Some(ServiceNowAuth::Basic {
                user: user.clone(),
                password: password.clone(),
            }),
            _ => None,
        };
        let servicenow = match (&sn.instance_url, auth) {
            (Some(url), Some(auth)) => {
                Some(ServiceNowClient::new(http, url.clone(), auth).with_metrics(metrics))
            }
            _ => None,
        };
        Self {
            entra,
            graph,
            servicenow,
            authority: settings.entra.authority_url.clone(),
            app_scope: sn.app_scope.clone(),
            http: http_for_checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> IntegrationSpec {
        IntegrationSpec {
            tenant: "contoso.onmicrosoft.com".to_owned(),
            tenant_id: None,
            organization_name: None,
            instance_url: Url::parse("https://dev12345.service-now.com/").expect("url"),
            auth_type: AuthType::Aad,
            outbound_app: AppCredentials {
                client_id: "out".to_owned(),
                client_secret: SecretString::from("s"),
            },
            inbound_app: None,
            rest_user_app: Some(AppCredentials {
                client_id: "rest".to_owned(),
                client_secret: SecretString::from("s"),
            }),
            integration_user: None,
            integration_user_password: None,
        }
    }

    #[test]
    fn guide_values_are_derived_from_the_spec() {
        let spec = spec();
        let authority = Url::parse("https://login.microsoftonline.com/").expect("url");
        assert_eq!(
            spec.redirect_url(),
            "https://dev12345.service-now.com/oauth_redirect.do"
        );
        assert_eq!(
            spec.token_url(&authority),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/token"
        );
        assert_eq!(
            spec.metadata_url(&authority),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/.well-known/openid-configuration"
        );
        assert_eq!(spec.oidc_provider_name(), "Contoso Azure");
        assert_eq!(
            spec.oidc_entity_name(),
            "contoso.onmicrosoft.com_application_inbound_api"
        );
        assert_eq!(spec.integration_user_name().as_deref(), Some("rest"));
    }
}
